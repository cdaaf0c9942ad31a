"""Where adapters go: choose the convs, rebuild the class branch if needed, inject PEFT LoRA, set trainables.

Every choice is recorded (targets, excluded layers and why, densely trained tensors) so the adapter's
metadata explains exactly what was trained and ``merge`` can rebuild the same structure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from edge_lora.errors import InputError
from edge_lora.train.config import DEFAULT_TARGETS, LoraSettings

ADAPTER_NAME = "default"  # PEFT's default adapter name; one adapter per package


@dataclass
class TargetPlan:
    """The outcome of target selection."""

    targets: list[str]
    excluded: dict[str, str]  # module name -> why it was not adapted
    head_mode: str  # resolved head mode: frozen | frozen-lora | train | rebuild | rebuild-lora
    dense_prefixes: list[str] = field(
        default_factory=list
    )  # modules trained densely (saved as PEFT ``modules_to_save``, see :func:`dense_modules`)
    norm_modules: list[str] = field(
        default_factory=list
    )  # BatchNorm layers trained (``norm: train``), in train mode; those outside the dense head are listed
    # in dense_prefixes too, so they are saved, loaded and merged like any densely trained module


def head_index(model: nn.Module) -> int:
    """Index of the Detect head in ``model.model``."""
    return len(model.model) - 1


def _section_of(model: nn.Module, name: str) -> str | None:
    """'backbone', 'neck' or 'head' for a module name like ``model.9.cv1.conv``."""
    m = re.match(r"model\.(\d+)\.", name)
    if not m:
        return None
    idx = int(m.group(1))
    n_backbone = len((getattr(model, "yaml", {}) or {}).get("backbone", []))
    if idx == head_index(model):
        return "head"
    return "backbone" if idx < n_backbone else "neck"


def _exclusion_reason(name: str, conv: nn.Conv2d) -> str | None:
    if ".dfl." in f".{name}." or name.endswith(".dfl.conv"):
        return "DFL projection: fixed, non-trainable weights"
    if conv.groups != 1:
        return f"grouped/depthwise conv (groups={conv.groups}): low-rank update not applied to grouped convs"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode}: merge is exact only for zero padding"
    return None


def _matches(token: str, model: nn.Module, name: str) -> bool:
    section = _section_of(model, name)
    if token == "all":
        return section is not None
    if token in ("backbone", "neck", "head"):
        return section == token
    if token.isdigit():
        return name.startswith(f"model.{token}.")
    try:
        return re.fullmatch(token, name) is not None
    except re.error as e:
        raise InputError(f"--targets: '{token}' is not a valid regex ({e})") from None


def plan_targets(model: nn.Module, settings: LoraSettings, head_mode: str) -> TargetPlan:
    """Select the Conv2d modules that get LoRA, and which head tensors are trained densely."""
    hidx = head_index(model)
    dense: list[str] = []
    if head_mode == "train":
        dense = [f"model.{hidx}"]
    elif head_mode == "rebuild":
        dense = [f"model.{hidx}.{b}" for b in class_branches(model)]
    elif head_mode == "rebuild-lora":
        dense = class_branch_dense(model)
    # --head lora: the class branches' other convs are adapted whatever --targets says (nothing else trains them)
    forced = (
        {n for b in class_branches(model) for n in _convs_under(model, f"model.{hidx}.{b}")}
        if head_mode in ("rebuild-lora", "frozen-lora")
        else set()
    )
    targets, excluded = [], {}
    wanted = settings.targets if settings.targets is not None else DEFAULT_TARGETS
    matched_any = {t: False for t in wanted}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        hits = [t for t in wanted if _matches(t, model, name)]
        for t in hits:
            matched_any[t] = True
        if not hits and name not in forced:
            continue
        reason = _exclusion_reason(name, module)
        if reason is None and any(name == p or name.startswith(p + ".") for p in dense):
            reason = "trained densely with the head"
        if reason:
            excluded[name] = reason
        else:
            targets.append(name)
    norms: list[str] = []
    if settings.norm == "train":
        norms = batchnorm_modules(model)
        dense += [n for n in norms if not any(n.startswith(p + ".") for p in dense)]
    unmatched = [t for t, ok in matched_any.items() if not ok]
    if unmatched:
        raise InputError(f"--targets: {', '.join(unmatched)} matched no Conv2d layer of the model")
    if not targets:
        raise InputError("--targets selected no adaptable Conv2d (all were excluded); widen the selection")
    return TargetPlan(
        targets=targets, excluded=excluded, head_mode=head_mode, dense_prefixes=dense, norm_modules=norms
    )


def class_branches(model: nn.Module) -> list[str]:
    """The Detect head's class branches (``cv3``, and YOLO26's end-to-end copy ``one2one_cv3``)."""
    detect = model.model[head_index(model)]
    return [b for b in ("cv3", "one2one_cv3") if getattr(detect, b, None) is not None]


def _convs_under(model: nn.Module, prefix: str) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith(prefix + ".")]


def class_branch_dense(model: nn.Module) -> list[str]:
    """What ``--head lora`` trains densely in each class branch: the final class conv of every scale (new, so
    it has no base weights to adapt) and the depthwise conv blocks (LoRA does not apply to grouped convs).

    Their modules are listed the way :func:`dense_modules` saves them: a depthwise conv as its ``Conv`` block
    (conv and BN), the final class conv as itself.
    """
    modules = dict(model.named_modules())
    head = f"model.{head_index(model)}"
    dense: list[str] = []
    for branch in class_branches(model):
        for i, _ in enumerate(modules[f"{head}.{branch}"]):
            convs = _convs_under(model, f"{head}.{branch}.{i}") or [f"{head}.{branch}.{i}"]
            final = convs[-1]
            for name in convs[:-1]:
                if modules[name].groups != 1:
                    parent = name.rsplit(".", 1)[0]
                    dense.append(
                        parent if isinstance(getattr(modules[parent], "bn", None), nn.Module) else name
                    )
            dense.append(final)
    return dense


def batchnorm_modules(model: nn.Module) -> list[str]:
    """Names of every BatchNorm layer of ``model`` (what ``norm: train`` trains)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def resolve_head_mode(requested: str, base_names: dict[int, str], data_names: dict[int, str]) -> str:
    """Turn the user's --head choice into ``frozen`` | ``train`` | ``rebuild``.

    ``rebuild`` (auto with new classes) re-initialises the final class convs and trains the class branches
    densely; ``rebuild-lora`` (``lora`` with new classes) re-initialises the same convs but trains only them
    (and the depthwise convs) densely, the rest of the class branches with LoRA; ``train`` trains the whole
    head densely (after the same rebuild when the classes differ). ``lora`` with the base's classes needs no
    rebuild: it is ``frozen`` with the class branches adapted.
    """
    same = base_names == data_names
    if requested == "auto":
        return "frozen" if same else "rebuild"
    if requested == "lora":
        return "frozen-lora" if same else "rebuild-lora"
    if requested == "frozen" and not same:
        raise InputError(
            f"--head frozen: the data's classes {list(data_names.values())} differ from the base's "
            f"{list(base_names.values())}; use --head auto to rebuild the class branch"
        )
    return requested


def rebuild_for_classes(model: nn.Module, names: dict[int, str], seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose head predicts ``names``: everything but the final class convs is copied.

    The final 1x1 conv of each class branch is re-initialised (Ultralytics' own init and bias prior) with a
    fixed seed, so ``merge`` rebuilds the very same structure and then loads the trained tensors over it.
    """
    from ultralytics.nn.tasks import DetectionModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        new = DetectionModel(model.yaml, nc=len(names), verbose=False)
    new.load_state_dict(_shape_matching(model.state_dict(), new.state_dict()), strict=False)
    new.names = dict(names)
    new.args = getattr(model, "args", {})
    new.float().eval()
    for p in new.parameters():
        p.requires_grad_(False)
    return new


def _shape_matching(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in src.items() if k in dst and dst[k].shape == v.shape}


def lora_config(settings: LoraSettings, targets: list[str], base_name: str) -> Any:
    """The PEFT ``LoraConfig`` for these targets (exact module names, so nothing else is matched)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_rslora=settings.rslora,
        target_modules=list(targets),
        bias="none",
        init_lora_weights=True,  # Kaiming A, zero B: the adapted model starts exactly at the base
        base_model_name_or_path=base_name,
    )


def inject_lora(model: nn.Module, config: Any) -> Any:
    """Inject PEFT LoRA layers into ``model`` in place; return the PEFT ``LoraModel`` tuner (for merging).

    The Ultralytics ``DetectionModel`` keeps its class and its ``model.N`` layout (only the inner
    ``nn.Conv2d`` of each targeted ``Conv`` block is wrapped), so the Ultralytics trainer, loss and
    validator work on it unchanged. For that reason a config's ``modules_to_save`` (the densely trained head,
    as an adapter package records it for PEFT) is not applied here: PEFT would wrap those modules in
    ``ModulesToSaveWrapper`` copies; edge-lora trains and loads the dense head tensors on the plain modules.
    """
    from copy import deepcopy

    from peft.tuners.lora import LoraModel

    if getattr(config, "modules_to_save", None):
        config = deepcopy(config)
        config.modules_to_save = None
    return LoraModel(model, config, ADAPTER_NAME)


def set_trainable(model: nn.Module, dense_prefixes: list[str]) -> list[str]:
    """requires_grad only for LoRA matrices and the densely trained head tensors; return their names."""
    trainable = []
    for name, p in model.named_parameters():
        on = "lora_" in name or any(name.startswith(pref + ".") for pref in dense_prefixes)
        if ".dfl." in name:
            on = False
        p.requires_grad_(on)
        if on:
            trainable.append(name)
    return trainable


def dense_state(model: nn.Module, dense_prefixes: list[str]) -> dict[str, torch.Tensor]:
    """The densely trained tensors (parameters and BN buffers of the trained head modules), by base name."""
    out = {}
    for name, t in model.state_dict().items():
        if any(name.startswith(p + ".") for p in dense_prefixes) and ".dfl." not in name:
            out[name.replace(".base_layer.", ".")] = t.detach().clone().contiguous()
    return out


def dense_modules(model: nn.Module, dense_prefixes: list[str]) -> list[str]:
    """The modules holding the densely trained tensors, as PEFT's ``modules_to_save`` names them.

    PEFT wraps each of them in a ``ModulesToSaveWrapper``, which cannot wrap a ``ModuleList`` (``Detect``
    indexes ``cv3[i]``) and must not copy the fixed DFL projection; so every dense prefix is expanded to the
    callable modules under it: the members of ``ModuleList``/``ModuleDict`` containers, and the children of
    the ``Detect`` head itself (``model.N.cv3.0``, ``model.N.one2one_cv3.0``, ...). Together they hold exactly
    the tensors of :func:`dense_state`.
    """
    modules = dict(model.named_modules())
    head = f"model.{head_index(model)}"
    out: list[str] = []

    def visit(name: str) -> None:
        module = modules[name]
        if ".dfl." in f".{name}." or not module.state_dict():
            return  # fixed DFL projection, or nothing to save (e.g. an Identity)
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)) or name == head:
            for child, _ in module.named_children():
                visit(f"{name}.{child}")
        else:
            out.append(name)

    for prefix in dense_prefixes:
        if prefix not in modules:
            raise InputError(f"densely trained module {prefix} is not in the model")
        visit(prefix)
    return out


def frozen_snapshot(model: nn.Module, trainable: list[str]) -> dict[str, torch.Tensor]:
    """Copies of every tensor that must not change during training (frozen weights and all BN buffers)."""
    skip = set(trainable)
    return {
        k: v.detach().clone() for k, v in model.state_dict().items() if k not in skip and "lora_" not in k
    }


def frozen_changes(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> list[str]:
    """Names of snapshot tensors that are no longer bit-identical in ``model`` (should be empty)."""
    state = model.state_dict()
    return [k for k, v in snapshot.items() if k not in state or not torch.equal(state[k].to(v.device), v)]
