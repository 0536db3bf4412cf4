"""Fuzzing the compiler (issue 13): generated description strings through ``denet.compile``.

The strings: random tokens from the grammar's alphabet and the registry's types, random chains
built from the registry's argument schemas, and mutations of every ``examples/*.desc`` (huge
numbers, NaN and infinity, deep nesting, many branches, dropped and duplicated tokens and
brackets, truncation). Each runs in a worker process under a memory cap (``RLIMIT_AS``: 2 GiB
more than the worker holds after importing torch) and a time limit (5 s per string, measured by
the worker; a worker silent for longer is killed), at 3x32x32 with 5 classes.

The only acceptable outcomes: a ``DescError`` (one message, a caret line when it has a column),
or a model whose outputs in evaluation mode have the shapes the compiler inferred, whose
canonical string is a fixed point of ``canonical`` and compiles to the same graph
(``graph.signature()``). ``canonical`` itself, on any string, returns a string or raises a
``DescError``.

The workers run under smaller limits than the defaults (docs/language.md, Limits): the defaults
admit models of 2 GB and seconds of initialisation, which is what they are for, while here every
string must stay under 5 s and 2 GB. A forward pass runs only when the compiled graph's
multiply-accumulates (parameters times output positions, per layer) stay under a budget: the
limits bound compiling, not a forward's arithmetic.

``make fuzz`` runs the larger, ``slow`` test (``DENET_FUZZ_STRINGS``, ``DENET_FUZZ_SEED``).
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.desc")))

NORMAL_RUN = 600  # strings in the normal suite (about 15 s on two cores)
SHAPE = (3, 32, 32)
CLASSES = 5
SECONDS = 5.0  # per string, compile + canonical + forward
MEMORY = 2 << 30  # bytes a worker may add to what it holds after importing torch
MACS = 300_000_000  # largest forward (multiply-accumulates) run on a compiled string
FUZZ_LIMITS = {  # tighter than the defaults, so that whatever compiles fits SECONDS and MEMORY
    "DENET_MAX_NODES": "2000",
    "DENET_MAX_PARAMS": "20000000",
    "DENET_MAX_MAP_BYTES": "16000000",
    "DENET_MAX_ACTIVATION_BYTES": "256000000",
}

# -- the strings ---------------------------------------------------------------------------------

HOSTILE_NUMBERS = [
    "0",
    "-1",
    "-7",
    "1000000",
    "1000000000000",
    str(2**31),
    str(2**63 - 1),
    str(2**63),
    "-" + str(2**63 + 1),
    "9" * 5000,
    "1e308",
    "1e400",
    "-1e400",
    "1e-400",
    "0.0",
    "0.5",
    "2.5",
    "nan",
    "inf",
    "-inf",
]
NAMES = ["half", "valid", "same", "full", "he-forward", "xavier-backward-uniform", "x", "r", "f"]
PUNCTUATION = ["[", "]", "(", ")", "|", ",", "=", ".", " ", "  ", "\n", "# note\n", "@f", "$f"]


def _registry_types():
    from denet.layers import REGISTRY

    return [(t.type, t) for t in REGISTRY]


def _value(rng: random.Random, arg, taps: list[str]):
    kind = arg.kind
    if rng.random() < 0.04:
        return rng.choice(HOSTILE_NUMBERS)
    if kind == "int":
        return str(rng.choice([1, 1, 2, 2, 3, 4, 8, 16, 0, 5]))
    if kind == "float":
        return rng.choice(["0.5", "0.9", "1e-05", "0.1", "1", "0.0", "2.0"])
    if kind == "bool":
        return rng.choice(["0", "1"])
    if kind == "border":
        return rng.choice(["half", "valid", "same", "full", "1"])
    if kind == "init":
        return rng.choice(["he-forward", "0.01", "xavier-backward-uniform", "0"])
    if kind == "tap":
        return rng.choice(taps or ["r"])
    if arg.choices:
        return str(rng.choice(arg.choices))
    return rng.choice(["a", "b", "out", "aux"])


def _layer(rng: random.Random, ltype, taps: list[str]) -> str:
    from denet.layers import REQUIRED

    tags = "".join(t for t in ltype.tags if rng.random() < 0.25)
    head = ltype.type + ("." + tags if tags else "")
    pos = ltype.positional(tags)
    n = rng.randint(0, len(pos)) if pos else 0
    required = sum(1 for a in pos if a.default is REQUIRED)
    if rng.random() < 0.8:
        n = max(n, required)
    args = [_value(rng, a, taps) for a in pos[:n]]
    for kw in ltype.all_keywords(tags):
        if (kw.kind == "tap" and kw.default is not None) or rng.random() < 0.12:
            args.append(f"{kw.name}={_value(rng, kw, taps)}")
    return head + ("[" + ",".join(args) + "]" if args else "")


def random_chain(rng: random.Random, types, depth: int = 0, taps=None) -> str:
    """A chain of registry layers with arguments drawn from their schemas, now and then a
    group, a tap or a reference: strings that often compile."""
    taps = [] if taps is None else taps
    items = []
    for _ in range(rng.randint(1, 7)):
        r = rng.random()
        if r < 0.1 and depth < 3:
            kind = rng.choice(["SUM", "CAT", "MAX", "REP", "SHARE"])
            if kind == "REP":
                body = random_chain(rng, types, depth + 1, taps)
                items.append(f"REP[{rng.choice(['1', '2', '3'])}]({body})")
            elif kind == "SHARE":
                name = rng.choice(["s", "t"])
                items.append(f"SHARE[{name}]({random_chain(rng, types, depth + 1, taps)})")
                if rng.random() < 0.7:
                    items.append(f"USE[{name}]")
            else:
                branches = [random_chain(rng, types, depth + 1, taps) for _ in range(2)]
                if rng.random() < 0.3:
                    branches.append("")
                items.append(f"{kind}(" + " | ".join(branches) + ")")
        elif r < 0.17:
            name = rng.choice(["f", "r", "a"])
            items.append("@" + name)
            taps.append(name)
        elif r < 0.2 and taps:
            items.append("$" + rng.choice(taps))
        elif r < 0.6:  # the common, shape-keeping layers
            items.append(
                rng.choice(
                    [
                        f"C[{rng.choice([2, 4, 8])},{rng.choice([1, 3])},border=half]",
                        "BN",
                        "BNA",
                        "A",
                        "P[2]",
                        "PI[2]",
                        f"RSN[{rng.choice([4, 8])},3]",
                        "I",
                        "GN[2]",
                    ]
                )
            )
        else:
            name, ltype = rng.choice(types)
            if ltype.is_group:
                continue
            items.append(_layer(rng, ltype, taps))
    if depth == 0 and rng.random() < 0.3:
        items.append(rng.choice(["R", "P.A R", "SEG", "C[5,1] SEG"]))
    return " ".join(items)


def token_soup(rng: random.Random, types) -> str:
    """Random tokens of the grammar's alphabet and the registry's types."""
    parts = []
    for _ in range(rng.randint(1, 25)):
        r = rng.random()
        if r < 0.35:
            name, ltype = rng.choice(types)
            tags = "".join(rng.choice("ABCOVXGJT") for _ in range(rng.randint(0, 1)))
            parts.append(name + ("." + tags if tags else ""))
        elif r < 0.55:
            parts.append(rng.choice(PUNCTUATION))
        elif r < 0.75:
            parts.append(rng.choice(HOSTILE_NUMBERS + ["1", "2", "3", "8"]))
        elif r < 0.85:
            parts.append(rng.choice(NAMES))
        else:
            name, ltype = rng.choice(types)
            parts.append(_layer(rng, ltype, ["f"]))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


_NUMBER = re.compile(r"(?<![A-Za-z_])[+-]?\d+(\.\d*)?([eE][+-]?\d+)?")


def mutate(rng: random.Random, desc: str, types) -> str:
    """One to three mutations of an example string."""
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(12)
        numbers = list(_NUMBER.finditer(desc))
        words = desc.split()
        if op <= 2 and numbers:  # a hostile number in place of one
            m = rng.choice(numbers)
            desc = desc[: m.start()] + rng.choice(HOSTILE_NUMBERS) + desc[m.end() :]
        elif op == 3 and words:  # a token dropped
            del words[rng.randrange(len(words))]
            desc = " ".join(words)
        elif op == 4 and words:  # a token duplicated
            k = rng.randrange(len(words))
            words.insert(k, words[k])
            desc = " ".join(words)
        elif op == 5 and desc:  # a bracket dropped or added
            brackets = [i for i, c in enumerate(desc) if c in "[]()|,="]
            if brackets and rng.random() < 0.5:
                k = rng.choice(brackets)
                desc = desc[:k] + desc[k + 1 :]
            else:
                k = rng.randrange(len(desc) + 1)
                desc = desc[:k] + rng.choice("[]()|,=") + desc[k:]
        elif op == 6:  # deep nesting around it
            depth = rng.choice([3, 20, 31, 33, 60, 300])
            head = rng.choice(["REP[2](", "SUM(I | ", "SHARE[x](", "CAT("])
            desc = head * depth + desc + ")" * depth
        elif op == 7 and words:  # many branches of one token
            n = rng.choice([2, 50, 1000, 3000, 30000])
            desc = "SUM(" + " | ".join([rng.choice(words)] * n) + ")"
        elif op == 8 and words:  # a non-finite or huge keyword value
            k = rng.randrange(len(words))
            kw = rng.choice(["init=nan", "init=inf", "lr=1e400", "lr=nan", "init=1e400"])
            w = words[k]
            words[k] = w[:-1] + "," + kw + "]" if w.endswith("]") else w + "[" + kw + "]"
            desc = " ".join(words)
        elif op == 9 and desc:  # truncated
            desc = desc[: rng.randrange(len(desc))]
        elif op == 10 and words:  # a repeat of part of it
            a = rng.randrange(len(words))
            b = rng.randrange(a, len(words)) + 1
            n = rng.choice(["2", "3", "1000", "100000", "1000000000000"])
            desc = " ".join(words[:a] + [f"REP[{n}](" + " ".join(words[a:b]) + ")"] + words[b:])
        elif op == 11:  # a random registry layer inserted
            name, ltype = rng.choice(types)
            if not ltype.is_group:
                k = rng.randrange(len(words) + 1)
                desc = " ".join(words[:k] + [_layer(rng, ltype, ["f"])] + words[k:])
    return desc


def generate(seed: int, count: int) -> list[str]:
    """``count`` strings: about a third example mutations (every example at least once), a third
    random chains, a third token soup, in a fixed order for the seed."""
    rng = random.Random(seed)
    types = _registry_types()
    examples = [open(p).read() for p in EXAMPLES]
    out = []
    for k in range(count):
        kind = k % 3
        if kind == 0:
            out.append(mutate(rng, examples[(k // 3) % len(examples)], types))
        elif kind == 1:
            out.append(random_chain(rng, types))
        else:
            out.append(token_soup(rng, types))
    return out


# -- the worker: one process, many strings -------------------------------------------------------


def _macs(model) -> int:
    from denet.dsl.resolve import shape_elements
    from denet.layers import REGISTRY

    total = 0
    for node in model.graph.nodes:
        if node.call is None or node.shared is not None:
            continue
        ltype = REGISTRY.get(node.type)
        positions = max(1, shape_elements(node.shape) // max(1, node.shape.channels))
        total += ltype.params(node.call) * positions + shape_elements(node.shape)
    return total


def _check_value(value, shape, batch: int, per_roi: bool) -> str | None:
    """None when ``value`` is what ``shape`` says, else what differs."""
    import torch

    kind = shape.kind
    if kind == "detections":
        ok = isinstance(value, list) and len(value) == batch
        return None if ok else f"expected {batch} detection dicts, got {type(value).__name__}"
    if not isinstance(value, torch.Tensor):
        return f"expected a tensor for {kind} {shape}, got {type(value).__name__}"
    got = tuple(value.shape)
    if kind == "map":
        want = (shape.channels, shape.height, shape.width)
        if got[1:] != want or (not per_roi and got[0] != batch):
            return f"inferred {kind} {shape} (batch {batch}), real {got}"
    elif kind == "vector":
        if got != (batch, shape.channels):
            return f"inferred {kind} {shape} (batch {batch}), real {got}"
    elif kind == "boxes":
        if got[1:] != (5,) or (shape.channels and got[0] != batch * shape.channels):
            return f"inferred {shape} per image (batch {batch}), real {got}"
    return None


def check_one(desc: str) -> dict:
    """Everything the fuzz requires of one string; ``failed`` names what went wrong."""
    import torch

    import denet
    from denet.dsl import canonical

    result: dict = {"outcome": "refused"}
    try:
        canonical(desc)
    except denet.DescError:
        pass
    try:
        model = denet.compile(desc, SHAPE, CLASSES, border_mode="half")
    except denet.DescError as err:
        text = str(err)
        lines = text.split("\n")
        if not err.message or "Traceback" in text:
            return {"outcome": "failed", "detail": f"bad DescError text: {text[:300]!r}"}
        if err.column is not None:
            line = desc.split("\n")[(err.line or 1) - 1]
            if len(lines) != 3 or not lines[2].endswith("^"):
                return {"outcome": "failed", "detail": f"no caret line: {text[:300]!r}"}
            if not 1 <= err.column <= len(line) + 1:
                return {"outcome": "failed", "detail": f"caret outside the line: {text[:300]!r}"}
        result["detail"] = lines[0][:200]
        return result
    result["outcome"] = "compiled"
    text = canonical(desc)
    if canonical(text) != text:
        return {"outcome": "failed", "detail": f"canonical not a fixed point: {text[:300]!r}"}
    if model.desc != text:
        return {"outcome": "failed", "detail": f"Model.desc {model.desc[:200]!r} != canonical"}
    again = denet.compile(text, SHAPE, CLASSES, border_mode="half")
    if again.graph.signature() != model.graph.signature():
        return {"outcome": "failed", "detail": f"canonical {text[:300]!r} is another graph"}
    del again
    macs = _macs(model)
    if macs > MACS:
        result["detail"] = f"no forward ({macs:,} MACs)"
        return result
    graph = model.graph
    # RoI features have one row per box, not per image: a layer reading a set of boxes (a tap
    # argument such as rois=) leaves the batch size of what follows it unchecked
    per_roi = any(
        graph.shape_of(i).kind == "boxes" for n in graph.nodes for i in n.kwinputs.values()
    )
    model.eval()
    batch = 2
    with torch.no_grad():
        out = model(torch.randn(batch, *SHAPE))
    outputs = graph.outputs
    if outputs:
        if not isinstance(out, dict) or list(out) != list(outputs):
            return {"outcome": "failed", "detail": f"outputs {list(outputs)}, got {type(out)}"}
        pairs = [(out[k], graph.shape_of(v)) for k, v in outputs.items()]
    else:
        pairs = [(out, graph.output_shape)]
    for value, shape in pairs:
        problem = _check_value(value, shape, batch, per_roi)
        if problem:
            return {"outcome": "failed", "detail": problem}
    result["detail"] = "forward checked"
    return result


WARM_UP = [
    "C[8,3] BN A P[2] PI[2] GN[2] C[5,1] SEG",
    "C[16,3] BN A P[2] C[32,3] BN A P[2] @f BOXES[12] @r $f RA[4,rois=r] C[64,4] BN A DET[rois=r]",
    "C[16,3] BNA P[2] C[32,3] BNA DNC[16] DNS[3,8,0.01,0.1] C.B[64,1] BNA DND[0.5,1,1]",
    "C[8,3] SUM(I | C[8,1]) REP[2](RSN[8,3]) SHARE[s](C[8,1]) USE[s] P.A R",
]


def worker() -> None:  # pragma: no cover - runs in the child process
    """Reads JSON strings on stdin, one a line; writes one JSON result a line."""
    import gc
    import resource
    import traceback

    import torch

    import denet  # noqa: F401  (imported before the cap: it is not the strings' memory)

    torch.set_num_threads(1)
    for desc in WARM_UP:  # lazily imported modules and caches are not the strings' either
        check_one(desc)
    gc.collect()
    gc.freeze()  # and collecting after each string only visits what the string made
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY, vm + MEMORY))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        desc = json.loads(line)
        start = time.perf_counter()
        try:
            result = check_one(desc)
        except BaseException as err:  # noqa: BLE001 - every other exception is a finding
            tb = traceback.format_exception(type(err), err, err.__traceback__)
            result = {
                "outcome": "failed",
                "detail": f"{type(err).__name__}: {str(err)[:300]} | {''.join(tb[-3:])[:800]}",
            }
        result["seconds"] = time.perf_counter() - start
        if result["outcome"] != "refused":
            gc.collect()
        print(json.dumps(result), flush=True)


# -- the parent: workers, watchdog, verdict ------------------------------------------------------


class Worker:
    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.update(FUZZ_LIMITS)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        ready = self.read(120)
        assert ready == {"ready": True}, f"the fuzz worker did not start: {ready}"

    def read(self, timeout: float):
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def run(self, desc: str, timeout: float):
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(desc) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def fuzz(strings: list[str]) -> tuple[list[tuple[str, str]], dict]:
    """Runs every string; (failures as (string, what went wrong), outcome counts)."""
    failures: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    worker_ = Worker()
    try:
        for desc in strings:
            result = worker_.run(desc, SECONDS * 3)
            if result is None:  # silent too long or dead: a hang or a crash
                code = worker_.proc.poll()
                worker_.stop()
                what = f"no answer within {SECONDS * 3:g} s" if code is None else f"exit {code}"
                failures.append((desc, what))
                worker_ = Worker()
                continue
            outcome = result["outcome"]
            if outcome != "failed" and result["seconds"] > SECONDS:
                outcome, result["detail"] = "failed", f"took {result['seconds']:.1f} s"
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "failed":
                failures.append((desc, result["detail"]))
            elif result.get("detail") == "forward checked":
                counts["forward checked"] = counts.get("forward checked", 0) + 1
    finally:
        worker_.stop()
    return failures, counts


def _report(failures) -> str:
    shown = []
    for desc, what in failures[:12]:
        text = desc if len(desc) <= 300 else desc[:150] + f"…({len(desc)} chars)…" + desc[-100:]
        shown.append(f"{text!r}\n    -> {what}")
    return f"{len(failures)} strings failed:\n" + "\n".join(shown)


@pytest.mark.timeout(600)
def test_a_few_hundred_generated_strings_are_refused_or_compile_to_what_was_inferred():
    strings = generate(seed=13, count=NORMAL_RUN)
    failures, counts = fuzz(strings)
    assert not failures, _report(failures)
    # the generator must reach both outcomes, and forward passes, or it tests little
    assert counts.get("refused", 0) > 100 and counts.get("forward checked", 0) > 60, counts


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_many_generated_strings_are_refused_or_compile_to_what_was_inferred():
    count = int(os.environ.get("DENET_FUZZ_STRINGS", "5000"))
    seed = int(os.environ.get("DENET_FUZZ_SEED", "1"))
    failures, counts = fuzz(generate(seed, count))
    print(f"fuzz: {count} strings, seed {seed}: {counts}")
    assert not failures, _report(failures)


def test_the_generator_is_deterministic_and_covers_every_example():
    a, b = generate(7, 60), generate(7, 60)
    assert a == b and len(set(a)) > 50
    assert NORMAL_RUN // 3 >= len(EXAMPLES)  # the normal run mutates every example once or more


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    worker()
