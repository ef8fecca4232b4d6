"""Builds the shipped concept tables (cifar100_wordnet.csv, ancestors.json) from WordNet 3.0's noun database.

Not imported by the pipeline: the tables it writes are committed, so that no job needs WordNet. Rerun it only to
change a mapping:  python src/metarepro/data/concepts/build.py path/to/wordnet-3.0/dict/
(WordNet 3.0's `data.noun` and `index.noun`, Princeton University 2006: https://wordnet.princeton.edu; ImageNet's
wnids are "n" + the 8-digit offset of a noun synset in this version.)

CIFAR-100 class -> WordNet: the most frequent noun sense of the class name (or of LEMMAS' lemma) among those in
the lexicographer files of its CIFAR-100 superclass's kind (animals, plants, artifacts, ...; LEXFILES).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = HERE.parent / "splits"
BIRD = "n01503061"        # bird: every CUB-200-2011 species is one (Wah et al. 2011)

# The lemma looked up where the class name is not one (or names a less specific thing)
LEMMAS = {"aquarium_fish": "fish", "maple_tree": "maple", "oak_tree": "oak", "palm_tree": "palm",
          "pine_tree": "pine", "willow_tree": "willow"}
# The WordNet lexicographer files (noun.<file>) a superclass's photographs belong to: the class takes the most
# frequent sense of its lemma in one of them (so "seal" is the animal, not the stamp; "tank" the vehicle)
LEXFILES = {"animal": ("noun.animal",), "plant": ("noun.plant",), "food": ("noun.food", "noun.plant"),
            "artifact": ("noun.artifact",), "scene": ("noun.object", "noun.phenomenon", "noun.location"),
            "person": ("noun.person",)}
SUPERCLASS_KIND = {
    "aquatic_mammals": "animal", "fish": "animal", "insects": "animal", "large_carnivores": "animal",
    "large_omnivores_and_herbivores": "animal", "medium_mammals": "animal", "non-insect_invertebrates": "animal",
    "reptiles": "animal", "small_mammals": "animal", "flowers": "plant", "trees": "plant",
    "fruit_and_vegetables": "food", "food_containers": "artifact", "household_electrical_devices": "artifact",
    "household_furniture": "artifact", "large_man-made_outdoor_things": "artifact", "vehicles_1": "artifact",
    "vehicles_2": "artifact", "large_natural_outdoor_scenes": "scene", "people": "person"}
# Where the most frequent sense of that kind is still another thing, the sense (0-based in index.noun) by hand
SENSES = {"dolphin": 1,        # the cetacean; sense 0 is the fish (mahimahi)
          "plate": 3,          # the dish; sense 0 is baseball's home plate
          "castle": 1}         # the fortified building (ImageNet's castle); sense 0 is a stately mansion
LEXNAMES = {5: "noun.animal", 6: "noun.artifact", 13: "noun.food", 15: "noun.location", 17: "noun.object",
            18: "noun.person", 19: "noun.phenomenon", 20: "noun.plant"}


def read_wordnet(root: Path) -> tuple[dict, dict, dict, dict]:
    """offset -> hypernym offsets (@ and @i), offset -> lemmas, lemma -> noun senses (offsets, by frequency),
    offset -> lexicographer file."""
    hyper, words, lex = {}, {}, {}
    for line in (root / "data.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        f = line.split()
        off, n = f[0], int(f[3], 16)
        lex[off] = LEXNAMES.get(int(f[1]), f"lexfile {f[1]}")
        words[off] = [f[4 + 2 * i] for i in range(n)]
        i = 4 + 2 * n
        p = int(f[i])
        hyper[off] = [f[i + 1 + 4 * k + 1] for k in range(p) if f[i + 1 + 4 * k] in ("@", "@i")]
    senses = {}
    for line in (root / "index.noun").read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        f = line.split()
        n_ptr = int(f[3])
        senses[f[0]] = f[6 + n_ptr:]
    return hyper, words, senses, lex


def ancestors(off: str, hyper: dict[str, list[str]]) -> list[str]:
    seen, stack = set(), list(hyper.get(off, []))
    while stack:
        h = stack.pop()
        if h not in seen:
            seen.add(h)
            stack.extend(hyper.get(h, []))
    return sorted(seen)


def main(root: str) -> None:
    hyper, words, senses, lex = read_wordnet(Path(root))
    sys.path.insert(0, str(HERE.parents[2]))
    from metarepro.classes import CIFAR100_SUPERCLASSES
    rows, wnids = [], {BIRD}
    kind = {c: SUPERCLASS_KIND[s] for s, fine in CIFAR100_SUPERCLASSES.items() for c in fine}
    for cls in sorted(kind):
        lemma = LEMMAS.get(cls, cls)
        k = SENSES.get(cls, next(i for i, o in enumerate(senses[lemma]) if lex[o] in LEXFILES[kind[cls]]))
        off = senses[lemma][k]
        rows.append({"class": cls, "wnid": "n" + off, "synset": words[off][0], "sense": f"{lemma}#{k + 1}",
                     "lexfile": lex[off]})
        wnids.add("n" + off)
    for split in ("train", "val", "test"):
        with open(SPLITS / "miniimagenet_ravi" / f"{split}.csv", newline="") as f:
            wnids |= {r["label"] for r in csv.DictReader(f)}
        with open(SPLITS / "tieredimagenet_ren" / f"{split}.csv", newline="") as f:
            wnids |= {r[0] for r in csv.reader(f) if r}
    with open(HERE / "cifar100_wordnet.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["class", "wnid", "synset", "sense", "lexfile"])
        w.writeheader()
        w.writerows(rows)
    table = {wn: {"name": words[wn[1:]][0], "ancestors": ["n" + a for a in ancestors(wn[1:], hyper)]}
             for wn in sorted(wnids)}
    (HERE / "ancestors.json").write_text(json.dumps(table, indent=0, sort_keys=True) + "\n")
    print(f"{len(rows)} CIFAR-100 classes, {len(table)} wnids")


if __name__ == "__main__":
    main(sys.argv[1])
