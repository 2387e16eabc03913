"""Plain helpers of the test suite, imported normally (``from tests.helpers.data import write_hypersim``).

``data``: tiny datasets in the real on-disk layouts · ``diffusers``: tiny diffusers components and checkpoint
directories · ``checkpoints``: tiny tasks of every kind, their checkpoints, the quiet CPU trainer.
"""

from pathlib import Path

#: The repository root and the folder of the tests' tiny YAML configs.
REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "tests" / "conf"
