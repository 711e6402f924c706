"""Writes metaticket/data/splits/omniglot-vinyals.json, the standard Omniglot class split (Vinyals et al. 2016).

The character lists come from the asset files of torchmeta (pytorch-meta, commit d55d89e,
``torchmeta/datasets/assets/omniglot/{train,val,test}.json``, MIT licence, Copyright (c) 2019-2020 Tristan Deleu),
as kept in ``$METATICKET_DATA/omniglot/vinyals-split/``. They are data; this script only renames their entries to
the character ids metaticket uses (``images_background/<alphabet>/characterNN``) and sorts them.

    python scripts/make_omniglot_split.py [path/to/vinyals-split]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "metaticket" / "data" / "splits" / "omniglot-vinyals.json"
PARTS = {"background": "images_background", "evaluation": "images_evaluation"}
ABOUT = ("Omniglot split 'vinyals': the standard class split of Vinyals et al. (2016), 1028 train / 172 val / 423 "
         "test characters. Validation is 5 whole background alphabets; test is 12 whole evaluation alphabets plus "
         "Gurmukhi's characters 42-45 (its characters 1-41 are in train), so no other test alphabet is seen in "
         "training. Lists from torchmeta's assets (pytorch-meta commit d55d89e, "
         "torchmeta/datasets/assets/omniglot/, MIT licence, (c) 2019-2020 Tristan Deleu), the split of the "
         "Meta-ticket reference code; written by scripts/make_omniglot_split.py. Each character also gives 3 "
         "rotated classes in its own split.")


def main(src: Path) -> None:
    out: dict[str, object] = {"_about": ABOUT}
    for name in ("train", "val", "test"):
        lists = json.loads((src / f"{name}.json").read_text())
        out[name] = sorted(f"{PARTS[part]}/{alphabet}/{char}"
                           for part, alphabets in lists.items() for alphabet, chars in alphabets.items()
                           for char in chars)
    OUT.write_text(json.dumps(out, indent=0) + "\n")
    print(f"wrote {OUT}: " + ", ".join(f"{k} {len(out[k])}" for k in ("train", "val", "test")))


if __name__ == "__main__":
    default = Path(os.environ.get("METATICKET_DATA", "../shared/data")) / "omniglot" / "vinyals-split"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
