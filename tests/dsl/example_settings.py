"""The size, class count and border mode each ``examples/*.desc`` names in its comments
("compile with --border-mode half", "3x512x512", "768x1024 crops", "19 classes"), for tests that
compile every example as published."""

import glob
import os
import re

EXAMPLES = sorted(
    glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "examples", "*.desc"))
)


def settings(path: str) -> tuple[tuple[int, int, int], int, str]:
    """((C, H, W), classes, border mode) of an example: what its comments say, else ImageNet's
    3x224x224 and 1000 classes (CIFAR's 3x32x32 and 10 for the CIFAR strings), border valid."""
    text = "\n".join(line for line in open(path) if line.lstrip().startswith("#"))
    cifar = "cifar" in os.path.basename(path)
    shape = (3, 32, 32) if cifar else (3, 224, 224)
    m = re.search(r"\b(\d+)x(\d+)x(\d+)\b", text)
    if m:
        shape = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
    else:
        m = re.search(r"\b(\d+)x(\d+) (?:training )?crops\b", text)
        if m:
            shape = (3, int(m.group(1)), int(m.group(2)))
    m = re.search(r"\b(\d+) classes\b", text)
    classes = int(m.group(1)) if m else (10 if cifar else 1000)
    m = re.search(r"--border-mode (\w+)", text)
    border = m.group(1) if m else "valid"
    return shape, classes, border
