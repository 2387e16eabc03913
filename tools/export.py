"""Export a trained model: a student as safetensors + config (+ ONNX), a teacher as a diffusers directory.

Usage::

    python tools/export.py SOURCE --out DIR [--onnx [--opset 17]] [--teacher SRC] [--overwrite]
    python tools/export.py lightning_logs/stage2/version_0/checkpoints/last.ckpt --out exported/student --onnx
    python tools/export.py lightning_logs/teacher/version_0/checkpoints/last.ckpt --out exported/teacher

The body is :mod:`d3epth.cli.export`.
"""

import sys

from d3epth.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
