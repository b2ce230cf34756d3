"""Download what can still be downloaded, verify what is on disk, and say what is missing.

    python -m datasets.prepare --root ./data --download all          # fetch + verify everything possible
    python -m datasets.prepare --root ./data --verify                # check all 16 test sets (+ TinyImageNet train)
    python -m datasets.prepare --root ./data --verify cifar10 dtd --expect cifar10=4:10
    python -m datasets.prepare --root ./data --verify tinyImageNet --deep  # decode every image
    python -m datasets.prepare --root ./data --download ImageNet-A ImageNet-O ImageNet-R tinyImageNet_split
    python -m datasets.prepare --write_imagenet100                   # regenerate the committed ImageNet100 classes
    python -m datasets.prepare --root ./data --decoded_cache ./data/decoded --workers 8   # for --decoded_cache

Downloads use torchvision's own `download=True` (same folders as the loaders read), and the
official TinyImageNet zip (progress bar, md5 check, extracted in place; val stays in its raw
layout, the loader reads val_annotations.txt). StanfordCars and ImageNet cannot be downloaded;
for Caltech101/256, PCAM and SUN397 the torchvision links are unreliable (Google Drive, dead
hosts): a download is attempted and, when it fails, the exact files and layout are printed.

Verification builds each dataset through the registry, checks the annotation files, that the
labels are in range, that a few images decode, and compares the image and class counts with
the full dataset; `--deep` decodes every image (progress bar) and lists those that
cannot be decoded. Status: OK, MISSING (folder absent), INCOMPLETE (fewer images or classes than
expected), CORRUPT (images that cannot be decoded), ERROR (present but unreadable). Exit code 1 if any requested dataset
is not OK. `--expect NAME=COUNT[:CLASSES]` overrides the expected sizes (for partial copies
and test fixtures).

The paper's other sets (`PAPER_SETS`, never part of "all"): ImageNet-A/O/R download their released
tarballs; `tinyImageNet_split` is TinyImageNet's (its split is drawn and recorded on first use);
`ImageNet100` needs ImageNet's train/ folder (manual). `--write_imagenet100` rewrites the committed
class list of ImageNet100 from its seed (datasets/subsets.py).
"""
from __future__ import annotations

import argparse
import os
import sys

import torchvision.datasets as tvd
from torch.utils.data import DataLoader
from torchvision import transforms as T
from tqdm import tqdm

from datasets.catalog import INFO, TEST_DATASETS, DatasetError, prepare_hint
from datasets.common import CLASSNAMES_DIR
from datasets.decoded_cache import use_decoded_cache
from datasets.imagenet_shifts import URLS as TAR_URLS, download as download_tar
from datasets.labelled import CorruptImage, Indexed, collate_indexed
from datasets.registry import canonical_name, check_dataset, get_dataset
from datasets.subsets import IMAGENET100_FILE, draw_imagenet100, imagenet100_header
from datasets.tinyimagenet import URL as TINY_URL, download as download_tinyimagenet

TORCHVISION_DOWNLOAD = {
    # canonical name -> list of (torchvision class name, kwargs) whose download=True fetches it
    "cifar10": [("CIFAR10", {"train": True}), ("CIFAR10", {"train": False})],
    "cifar100": [("CIFAR100", {"train": True}), ("CIFAR100", {"train": False})],
    "STL10": [("STL10", {"split": "test"})],
    "Food101": [("Food101", {"split": "test"})],
    "oxfordpet": [("OxfordIIITPet", {"split": "test"})],
    "flowers102": [("Flowers102", {"split": "test"})],
    "dtd": [("DTD", {"split": "test"})],
    "EuroSAT": [("EuroSAT", {})],
    "fgvc_aircraft": [("FGVCAircraft", {"split": "test"})],
    # unreliable links: attempted, with the manual layout printed on failure
    "Caltech101": [("Caltech101", {})],
    "Caltech256": [("Caltech256", {})],
    "PCAM": [("PCAM", {"split": "test"})],
    "SUN397": [("SUN397", {})],
}


def download(name: str, root: str) -> str | None:
    """Fetch one dataset; returns None on success, else a message saying why and what to do."""
    if name in ("tinyImageNet", "tinyImageNet_split"):
        try:
            download_tinyimagenet(root)
            return None
        except Exception as e:  # urllib's URLError, socket timeout, md5 mismatch, bad zip ...
            return (f"download of {TINY_URL} failed ({type(e).__name__}: {e}). No internet? Download the zip "
                    f"elsewhere, put it at {os.path.join(root, 'tiny-imagenet-200.zip')} and re-run this command")
    if INFO[name].download == "tar":
        try:
            download_tar(name, root)
            return None
        except Exception as e:  # urllib's URLError, socket timeout, a truncated tar ...
            return (f"download of {TAR_URLS[name]} failed ({type(e).__name__}: {e}). No internet? "
                    f"{prepare_hint(name, root)}; or fetch the tar elsewhere and extract it into {root}")
    if name not in TORCHVISION_DOWNLOAD:
        return f"{name} cannot be downloaded automatically (see 'how to fix' above)"
    os.makedirs(root, exist_ok=True)
    try:
        for cls, kwargs in TORCHVISION_DOWNLOAD[name]:
            getattr(tvd, cls)(root, download=True, **kwargs)
        return None
    except Exception as e:  # network errors surface as URLError/OSError/RuntimeError from torchvision
        msg = f"torchvision download failed ({type(e).__name__}: {e})"
        if INFO[name].download == "manual":
            return f"{msg}; the link is known to be unreliable. {prepare_hint(name, root)}"
        return f"{msg}. No internet? Run this command again on a connected machine with the same --root"


def unreadable_images(name: str, root: str, split: str | None, workers: int = 0) -> list:
    """Decode every image of a dataset (progress bar); the `Unreadable` records of those that fail."""
    tiny = T.Compose([T.Resize((8, 8)), T.ToTensor()])  # the decode is what is checked
    data = get_dataset(name, root, split or INFO[name].eval_split, transform=tiny)
    loader = DataLoader(Indexed(data.dataset), batch_size=64, num_workers=workers, collate_fn=collate_indexed)
    bad = []
    with tqdm(total=len(data.dataset), unit="img", desc=f"decode {name}" + (f"[{split}]" if split else "")) as bar:
        for x, _, _, unreadable in loader:
            bad += unreadable
            bar.update(len(x) + len(unreadable))
    return bad


def verify(name: str, root: str, split: str | None, expect: dict, decode: int, deep: bool = False,
           workers: int = 0) -> dict:
    folder = os.path.join(root, INFO[name].folder)
    row = {"name": name if split is None else f"{name}[{split}]", "path": folder, "count": "-", "detail": ""}
    try:
        r = check_dataset(name, root, split, decode=decode)
    except CorruptImage as e:
        bad = unreadable_images(name, root, split, workers) if deep else e.bad
        row.update(status="CORRUPT", detail=_corrupt_detail(bad, deep))
        return row
    except DatasetError as e:
        row.update(status="MISSING" if not os.path.exists(folder) else "ERROR", detail=str(e))
        return row
    want_n, want_c = expect.get(row["name"], (r["expected_count"], r["expected_classes"]))
    row["count"] = f"{r['count']}/{want_n}" if want_n is not None else str(r["count"])
    row["path"] = r["path"]
    problems = []
    if want_n is not None and r["count"] != want_n:
        problems.append(f"{r['count']} images, expected {want_n}")
    if want_c is not None and r["num_classes"] != want_c:
        problems.append(f"{r['num_classes']} classes, expected {want_c}")
    bad = unreadable_images(name, root, split, workers) if deep else []
    if bad:
        row.update(status="CORRUPT", detail="; ".join(problems + [_corrupt_detail(bad, deep)]))
    else:
        row.update(status="INCOMPLETE" if problems else "OK", detail="; ".join(problems))
    return row


def _corrupt_detail(bad: list, deep: bool) -> str:
    shown = "\n    ".join(f"{b.path or f'sample {b.index}'} ({b.reason})" for b in bad[:20])
    more = f"\n    ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    scope = f"{len(bad)} image(s) cannot be decoded" if deep else \
        "an image cannot be decoded (--deep decodes every image and lists all of them)"
    return (f"{scope}:\n    {shown}{more}\n  replace them from the original archive, or train / evaluate with "
            f"--skip_corrupt to leave them out")


def parse_expect(items) -> dict:
    out = {}
    for item in items or []:
        try:
            name, sizes = item.split("=", 1)
            base, bracket, split = name.partition("[")  # "tinyImageNet[train]" names the train split
            count, _, classes = sizes.partition(":")
            out[canonical_name(base) + bracket + split] = (int(count), int(classes) if classes else None)
        except ValueError as e:
            raise SystemExit(f"--expect wants NAME=COUNT[:CLASSES], got {item!r} ({e})")
    return out


def names_from(values) -> list[str]:
    if not values or any(v.lower() == "all" for v in values):
        return list(TEST_DATASETS)
    return [canonical_name(v) for v in values]


class PrepareHelp(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring's layout kept, each flag's default shown."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=PrepareHelp, allow_abbrev=False)
    p.add_argument("--root", default="./data", help="folder that holds (or will hold) all datasets")
    p.add_argument("--download", nargs="*", metavar="NAME", help="datasets to fetch ('all' or none = all 16)")
    p.add_argument("--verify", nargs="*", metavar="NAME", help="datasets to check (none = all 16)")
    p.add_argument("--expect", nargs="*", metavar="NAME=COUNT[:CLASSES]",
                   help="override the expected image (and class) count of a dataset; "
                        "tinyImageNet[train]=N:C for the training split")
    p.add_argument("--decode", type=int, default=3, help="images decoded per dataset during --verify")
    p.add_argument("--deep", action="store_true", help="--verify decodes every image and lists those that fail")
    p.add_argument("--workers", type=int, default=0, help="loader processes for --deep")
    p.add_argument("--write_imagenet100", action="store_true",
                   help=f"rewrite datasets/classnames/{IMAGENET100_FILE} from its seed and exit")
    p.add_argument("--decoded_cache", metavar="DIR",
                   help="build the decoded cache of TinyImageNet train and val in DIR (what tga_zsr.py "
                        "--decoded_cache DIR would build on first use) and exit")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.decoded_cache:
        for split in ("train", "test"):
            try:
                data = use_decoded_cache(get_dataset("tinyImageNet", args.root, split), split, args.decoded_cache,
                                         args.workers)
            except DatasetError as e:
                print(f"tinyImageNet ({split}): {e}", file=sys.stderr)
                return 1
            print(f"tinyImageNet ({split}): {len(data)} images in {data.extra['decoded_cache']}")
        return 0
    if args.write_imagenet100:
        lines = imagenet100_header() + draw_imagenet100()
        (CLASSNAMES_DIR / IMAGENET100_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {CLASSNAMES_DIR / IMAGENET100_FILE} ({len(lines) - 2} classes)")
        return 0
    root = args.root
    expect = parse_expect(args.expect)

    failures = {}
    targets = []
    if args.download is not None:
        for name in names_from(args.download):
            print(f"== {name}: downloading into {root}", flush=True)
            err = download(name, root)
            if err:
                failures[name] = err
                print(f"   FAILED: {err}", flush=True)
            targets.append(name)
    if args.verify is not None or args.download is None:
        targets += [n for n in names_from(args.verify) if n not in targets]

    rows = []
    for name in targets:
        rows.append(verify(name, root, None, expect, args.decode, args.deep, args.workers))
        if name in ("tinyImageNet", "tinyImageNet_split", "ImageNet100"):  # training sets: train split too
            rows.append(verify(name, root, "train", expect, args.decode, args.deep, args.workers))
    width = max(len(r["name"]) for r in rows) if rows else 10
    print(f"\n{'dataset':<{width}}  {'status':<10}  {'count':>15}  path")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['status']:<10}  {r['count']:>15}  {r['path']}")
    bad = [r for r in rows if r["status"] != "OK"]
    for r in bad:
        base = r["name"].split("[")[0]
        print(f"\n[{r['status']}] {r['name']}:\n  {r['detail']}")
        if base in failures:
            print(f"  download: {failures[base]}")
    print(f"\n{len(rows) - len(bad)}/{len(rows)} OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
