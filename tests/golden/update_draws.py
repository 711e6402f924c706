"""Record the digests of the seeded draws (tests/golden/draws.json). Run only when a change of draws is intended,
and say so in the commit: every benchmark number was measured with the draws recorded here.

    METATICKET_DATA=../shared/data python tests/golden/update_draws.py
"""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_reliability import DRAWS, draw_digests  # noqa: E402

commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout
DRAWS.write_text(json.dumps({"made_by": f"tests/golden/update_draws.py at commit {commit.strip()} (+ working tree)",
                             **{k: draw_digests(k) for k in ("meta-train", "train")}}, indent=1) + "\n")
print(DRAWS.read_text())
