"""The TensorRT backend's host side: :mod:`.prepare` writes the plan folder a device builds its engine from
(the engine build itself is device-side, :mod:`edge_lora.runtime.tensorrt_engine`)."""
