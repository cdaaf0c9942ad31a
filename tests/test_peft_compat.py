"""The adapter package is a PEFT adapter: ``PeftModel.from_pretrained`` loads every tensor and reproduces
edge-lora's unmerged model; adapters of the previous format (schema 1) still load in edge-lora."""

from __future__ import annotations

import json
import shutil
import warnings
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from conftest import IMGSZ
from safetensors.torch import load_file, save_file

from edge_lora.errors import AdapterError
from edge_lora.fileio import sha256_file
from edge_lora.merge import _flat_outputs, merge
from edge_lora.models import load_detection_model
from edge_lora.train.adapter_io import (
    HEAD_FILE,
    META_FILE,
    PEFT_PREFIX,
    SCHEMA_VERSION,
    WEIGHTS_FILE,
    build_adapted_model,
    peft_base_model,
    read_adapter,
    write_adapter,
)
from edge_lora.train.config import LoraSettings
from edge_lora.train.inject import (
    ADAPTER_NAME,
    dense_state,
    inject_lora,
    lora_config,
    plan_targets,
    rebuild_for_classes,
)

NEW_NAMES = {0: "crack", 1: "void"}
REL_TOL = 1e-5


def _make(base, head: str, names: dict[int, str], seed: int = 0, trained: bool = True):
    """A LoRA model like training leaves it, with non-zero LoRA B and a moved dense head (so it can fail);
    ``trained=False``: as training starts (LoRA B zero, head as rebuilt)."""
    rebuilt = names != base.names
    model = rebuild_for_classes(base.model, names) if rebuilt else deepcopy(base.model)
    settings = LoraSettings(rank=4, alpha=8)
    plan = plan_targets(model, settings, head)
    inject_lora(model, lora_config(settings, plan.targets, base.source))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters() if trained else ():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif any(name.startswith(d + ".") for d in plan.dense_prefixes):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    meta = {
        "names": {str(k): v for k, v in names.items()},
        "base": {},
        "imgsz": IMGSZ,
        "head": {"mode": head, "rebuilt": rebuilt, "init_seed": 0},
    }
    return model.eval(), plan, meta


def _outputs(model, x) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return _flat_outputs(model(x))


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(
        ((a[k].double() - b[k].double()).abs().max() / a[k].double().abs().max().clamp_min(1e-12)).item()
        for k in a
    )


def _peft_load(base_model, adapter: Path):
    """``PeftModel.from_pretrained`` as a user calls it, with every warning it gives."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base_model, str(adapter)).eval()
    return model, [str(w.message) for w in caught]


def _write_schema1(out: Path, model, dense_prefixes: list[str], meta: dict) -> Path:
    """An adapter exactly as edge-lora wrote it before schema 2: unprefixed keys, head.safetensors."""
    from peft.utils import get_peft_model_state_dict

    out.mkdir(parents=True)
    config = model.peft_config[ADAPTER_NAME]
    lora = {
        k: v.detach().float().contiguous().clone()
        for k, v in get_peft_model_state_dict(
            model, adapter_name=ADAPTER_NAME, save_embedding_layers=False
        ).items()
    }
    assert not any(k.startswith(PEFT_PREFIX) for k in lora)
    save_file(lora, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    files = [WEIGHTS_FILE, "adapter_config.json"]
    dense = {k: v.float() for k, v in dense_state(model, dense_prefixes).items()}
    if dense:
        save_file(dense, str(out / HEAD_FILE), metadata={"format": "pt"})
        files.append(HEAD_FILE)
    (out / "adapter_config.json").write_text(
        json.dumps(
            config.to_dict(),
            indent=2,
            sort_keys=True,
            default=lambda o: sorted(o) if isinstance(o, set) else str(o),
        )
    )
    full = {
        **meta,
        "schema_version": 1,
        "kind": "edge-lora-adapter",
        "dense_prefixes": list(dense_prefixes),
        "dense_tensors": sorted(dense),
        "files": {f: sha256_file(out / f) for f in files},
    }
    (out / META_FILE).write_text(json.dumps(full))
    return out


# --- PEFT loads what edge-lora writes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "new_classes"),
    [("frozen", False), ("train", False), ("rebuild", True), ("train", True)],
    ids=["frozen-head", "dense-head", "rebuilt-head", "rebuilt-dense-head"],
)
def test_peft_from_pretrained_reproduces_unmerged_outputs(tmp_path, base_ckpt, head, new_classes):
    base = load_detection_model(base_ckpt)
    model, plan, meta = _make(base, head, NEW_NAMES if new_classes else base.names)
    adapter = write_adapter(tmp_path / "a", model, plan.dense_prefixes, meta)

    config = json.loads((adapter / "adapter_config.json").read_text())
    saved = load_file(str(adapter / WEIGHTS_FILE))
    assert all(k.startswith(PEFT_PREFIX) for k in saved)
    assert not (adapter / HEAD_FILE).exists()
    if head == "frozen":
        assert config["modules_to_save"] is None
    else:
        assert config["modules_to_save"] and all(".dfl" not in m for m in config["modules_to_save"])

    ours, _ = build_adapted_model(base.model, read_adapter(adapter))
    # With the base's own classes the base model itself is what PEFT gets; new classes need the rebuilt head.
    given = peft_base_model(base.model, adapter) if new_classes else deepcopy(base.model)
    peft_model, caught = _peft_load(given, adapter)
    assert not [w for w in caught if "missing" in w.lower() or "unexpected" in w.lower()], caught

    # Every tensor of the file is in the PEFT model: PEFT's own state dict of it is the file, bit for bit.
    from peft.utils import get_peft_model_state_dict

    again = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    assert again.keys() == saved.keys()
    assert all(torch.equal(again[k].to(saved[k].dtype), saved[k]) for k in saved)
    n_b = sum(1 for k in saved if ".lora_B." in k)
    assert n_b == len(plan.targets) and all(saved[k].abs().max() > 0 for k in saved if ".lora_B." in k)

    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    want, got = _outputs(ours, x), _outputs(peft_model, x)
    assert _max_rel(want, got) <= REL_TOL
    assert _max_rel(_outputs(model, x), want) <= REL_TOL  # and both are the model that was saved
    if not new_classes:  # the adapter really changes the outputs, so the comparison can fail
        assert _max_rel(_outputs(base.model, x), got) > 1e-3

    # PEFT's own merge gives the same model too.
    merged = peft_model.merge_and_unload()
    assert _max_rel(want, _outputs(merged, x)) <= 1e-4


def test_adapter_keys_are_the_ones_peft_saves(tmp_path, base_ckpt):
    """The file's key set is exactly what ``get_peft_model_state_dict`` gives for a ``get_peft_model`` model
    configured from the written adapter_config.json (LoRA and modules_to_save)."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    base = load_detection_model(base_ckpt)
    model, plan, meta = _make(base, "rebuild", NEW_NAMES)
    adapter = write_adapter(tmp_path / "a", model, plan.dense_prefixes, meta)
    config = LoraConfig.from_pretrained(str(adapter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "base_model_name_or_path was renamed": irrelevant here
        fresh = get_peft_model(rebuild_for_classes(base.model, NEW_NAMES), config)
    own = get_peft_model_state_dict(fresh, save_embedding_layers=False)
    saved = load_file(str(adapter / WEIGHTS_FILE))
    assert set(own) == set(saved)
    assert all(own[k].shape == saved[k].shape for k in saved)


def test_peft_needs_the_rebuilt_head_for_new_classes(tmp_path, base_ckpt):
    """What peft_base_model is for: the base's own head has the old number of classes, PEFT cannot load."""
    base = load_detection_model(base_ckpt)
    model, plan, meta = _make(base, "rebuild", NEW_NAMES)
    adapter = write_adapter(tmp_path / "a", model, plan.dense_prefixes, meta)
    from peft import PeftModel

    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(deepcopy(base.model), str(adapter))
    prepared = peft_base_model(base.model, adapter)
    assert prepared.names == NEW_NAMES and prepared.model[-1].nc == len(NEW_NAMES)
    assert base.model.model[-1].nc == len(base.names)  # the base itself is left as it was


def test_peft_loads_trained_adapter(trained_adapter, base_ckpt, demo_data):
    """A really trained adapter (train(), frozen head), on real images."""
    from ultralytics import YOLO

    from edge_lora.merge import _load_batch

    base = load_detection_model(base_ckpt).model
    ours, _ = build_adapted_model(base, read_adapter(trained_adapter.out))
    peft_model, caught = _peft_load(YOLO(str(base_ckpt)).model, trained_adapter.out)  # as a user would
    assert not [w for w in caught if "missing" in w.lower()], caught
    images = sorted((demo_data.root / "line_b" / "images" / "val").glob("*.png"))
    x = _load_batch(images[:4], IMGSZ)
    got = _outputs(peft_model, x)
    assert _max_rel(_outputs(ours, x), got) <= REL_TOL
    assert _max_rel(_outputs(base, x), got) > 0


# --- schema 1 (before PEFT keys) still loads ----------------------------------------------------------------


@pytest.mark.parametrize("head", ["frozen", "rebuild"])
def test_schema1_adapter_still_loads(tmp_path, base_ckpt, demo_data, head):
    base = load_detection_model(base_ckpt)
    names = NEW_NAMES if head == "rebuild" else base.names
    model, plan, meta = _make(base, head, names)
    old = _write_schema1(tmp_path / "old", model, plan.dense_prefixes, meta)
    assert (old / HEAD_FILE).is_file() == (head == "rebuild")

    package = read_adapter(old)
    assert package.meta["schema_version"] == 1
    assert bool(package.dense_state) == (head == "rebuild")
    loaded, _ = build_adapted_model(base.model, package)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    assert _max_rel(_outputs(model, x), _outputs(loaded, x)) <= REL_TOL

    # The same tensors as a schema-2 package of the same model.
    new = read_adapter(write_adapter(tmp_path / "new", model, plan.dense_prefixes, meta))
    assert new.meta["schema_version"] == SCHEMA_VERSION == 2
    assert new.lora_state.keys() == package.lora_state.keys()
    assert all(torch.equal(new.lora_state[k], package.lora_state[k]) for k in new.lora_state)
    assert new.dense_state.keys() == package.dense_state.keys()
    assert all(torch.equal(new.dense_state[k].float(), package.dense_state[k]) for k in new.dense_state)

    # merge works on it (the rest of the pipeline reads adapters through read_adapter)
    report = merge(base_ckpt, old, tmp_path / "m.pt", images=demo_data.root / "line_b" / "images" / "val")
    assert report.parity.passed

    # and the training loop's re-read of an adapter (_load_into) gives the same tensors
    from edge_lora.train.api import _load_into

    fresh, _, _ = _make(base, head, names, trained=False)
    want, before = model.state_dict(), fresh.state_dict()
    assert not all(torch.equal(before[k], v) for k, v in want.items())
    after = _load_into(fresh, old).state_dict()
    assert all(torch.equal(after[k], v) for k, v in want.items())


def test_schema1_adapter_is_what_peft_could_not_load(tmp_path, base_ckpt):
    """The bug this format fixes, so the warning check above can fail: PEFT warns and leaves lora_B at zero."""
    base = load_detection_model(base_ckpt)
    model, plan, meta = _make(base, "frozen", base.names)
    old = _write_schema1(tmp_path / "old", model, plan.dense_prefixes, meta)
    _, caught = _peft_load(deepcopy(base.model), old)
    assert any("Found missing adapter keys" in w for w in caught)


def test_unknown_or_newer_schema_and_unprefixed_keys_are_refused(tmp_path, base_ckpt):
    base = load_detection_model(base_ckpt)
    model, plan, meta = _make(base, "frozen", base.names)
    adapter = write_adapter(tmp_path / "a", model, plan.dense_prefixes, meta)
    meta_path = adapter / META_FILE
    recorded = json.loads(meta_path.read_text())

    meta_path.write_text(json.dumps({**recorded, "schema_version": 3}))
    with pytest.raises(AdapterError, match="schema 3 is newer.*upgrade edge-lora"):
        read_adapter(adapter)

    # a schema-2 file whose keys lack the prefix (hashes updated, so only the key check can refuse it)
    bad = tmp_path / "bad"
    shutil.copytree(adapter, bad)
    tensors = load_file(str(bad / WEIGHTS_FILE))
    save_file({k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}, str(bad / WEIGHTS_FILE))
    files = {**recorded["files"], WEIGHTS_FILE: sha256_file(bad / WEIGHTS_FILE)}
    (bad / META_FILE).write_text(json.dumps({**recorded, "files": files}))
    with pytest.raises(AdapterError, match="lacks PEFT's 'base_model.model.' key prefix"):
        read_adapter(bad)
