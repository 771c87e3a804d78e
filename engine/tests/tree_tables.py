#!/usr/bin/env python3
"""Regenerates the expected outputs of the tree kernel's onnxruntime cases.

`engine/src/tree/tests.rs` has a section "generated from onnxruntime 1.31.1": each
test there gives a tree ensemble (nodes, weights), an input `x`, and one `check(...)`
per configuration (classifier or regressor, post_transform, base_values) with the
labels and scores onnxruntime gives. This script reads the ensembles and inputs from
that file, builds the same ensemble as an ONNX TreeEnsembleClassifier/Regressor
(ai.onnx.ml opset 3), runs it on onnxruntime, and compares what onnxruntime says
with the committed labels and scores, bit for bit as float32 (NaN equals NaN).

Where onnxruntime leaves a score unwritten (the second column of a one-column binary
classifier under PROBIT, for one), the kernel writes 0 and so does the table: the
output buffers are bound to memory pre-filled with a sentinel, and any score still
holding it afterwards is 0.

    .cache/venv-fixtures/bin/python engine/tests/tree_tables.py          # check
    .cache/venv-fixtures/bin/python engine/tests/tree_tables.py --write  # rewrite

Uses the pins of tests/fixtures/requirements.txt (onnx, onnxruntime, numpy); see
tests/fixtures/README.md for the venv. Exit status 1 when a table differs (check)
or an ensemble cannot be parsed.
"""

import argparse
import math
import pathlib
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

ROOT = pathlib.Path(__file__).resolve().parents[2]
TESTS = ROOT / "engine/src/tree/tests.rs"
MARKER = "// === generated from onnxruntime 1.31.1 ==="
SENTINEL = np.float32(-7.0e30)

POST = {
    "None": "NONE",
    "Logistic": "LOGISTIC",
    "Softmax": "SOFTMAX",
    "SoftmaxZero": "SOFTMAX_ZERO",
    "Probit": "PROBIT",
}

NUMBER = {
    "f32::NAN": math.nan,
    "f64::NAN": math.nan,
    "f32::INFINITY": math.inf,
    "f32::NEG_INFINITY": -math.inf,
}


def number(tok):
    tok = tok.strip()
    if tok in NUMBER:
        return NUMBER[tok]
    return float(tok)


def numbers(text):
    text = text.strip().rstrip(",")
    return [number(t) for t in text.split(",")] if text else []


def squash(text):
    return re.sub(r"\s+", "", text)


TEST_FN = re.compile(r"#\[test\]\s*fn (\w+)\(\) \{(.*?)\n\}\n", re.S)
NODES = re.compile(r"let nodes = nodes\(&\[(.*?)\]\);", re.S)
WEIGHTS = re.compile(r"let weights = weights\(&\[(.*?)\]\);", re.S)
XS = re.compile(r"let x = \[(.*?)\];", re.S)
TUPLE = re.compile(r"\(([^()]*)\)")
CHECK = re.compile(
    r"(check|check_f64)\(\s*&spec\(\s*"
    r"(classifier\(\s*(\d+)\s*\)|regressor\(\s*(\d+)\s*,\s*Aggregate::(\w+)\s*\))\s*,\s*"
    r"PostTransform::(\w+)\s*,\s*&\[([^\]]*)\]\s*,\s*&nodes\s*,\s*&weights\s*,?\s*\)\s*,\s*"
    r"&x\s*,\s*(\d+)\s*,\s*&\[([^\]]*)\]\s*,\s*&\[([^\]]*)\]\s*,?\s*\);",
    re.S,
)


def parse_nodes(body):
    rows = []
    for t in TUPLE.findall(body):
        tree, node, feature, mode, value, true_id, false_id, tracks = [
            p.strip() for p in t.split(",")
        ]
        rows.append(
            (int(tree), int(node), int(feature), mode.strip('"'), number(value),
             int(true_id), int(false_id), tracks == "true")
        )
    return rows


def parse_weights(body):
    rows = []
    for t in TUPLE.findall(body):
        tree, node, target, weight = [p.strip() for p in t.split(",")]
        rows.append((int(tree), int(node), int(target), number(weight)))
    return rows


def build(nodes, weights, check):
    """The ONNX model for one `check`: `check` is the CHECK match."""
    (_, _, n_classes, n_targets, aggregate, post, base, n_features, _, _) = check.groups()
    attrs = dict(
        nodes_treeids=[n[0] for n in nodes],
        nodes_nodeids=[n[1] for n in nodes],
        nodes_featureids=[n[2] for n in nodes],
        nodes_modes=[n[3] for n in nodes],
        nodes_values=[n[4] for n in nodes],
        nodes_truenodeids=[n[5] for n in nodes],
        nodes_falsenodeids=[n[6] for n in nodes],
        nodes_missing_value_tracks_true=[int(n[7]) for n in nodes],
        post_transform=POST[post],
    )
    if numbers(base):
        attrs["base_values"] = numbers(base)
    elem = TensorProto.DOUBLE if check.group(1) == "check_f64" else TensorProto.FLOAT
    x = helper.make_tensor_value_info("X", elem, [None, int(n_features)])
    if n_classes is not None:
        k = int(n_classes)
        attrs.update(
            class_treeids=[w[0] for w in weights],
            class_nodeids=[w[1] for w in weights],
            class_ids=[w[2] for w in weights],
            class_weights=[w[3] for w in weights],
            classlabels_int64s=[10 + 3 * i for i in range(k)],
        )
        op = "TreeEnsembleClassifier"
        outputs = [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, k]),
        ]
    else:
        k = int(n_targets)
        attrs.update(
            target_treeids=[w[0] for w in weights],
            target_nodeids=[w[1] for w in weights],
            target_ids=[w[2] for w in weights],
            target_weights=[w[3] for w in weights],
            n_targets=k,
            aggregate_function=aggregate.upper(),
        )
        op = "TreeEnsembleRegressor"
        outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, k])]
    node = helper.make_node(
        op, ["X"], [o.name for o in outputs], domain="ai.onnx.ml", **attrs
    )
    graph = helper.make_graph([node], "tree", [x], outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
        ir_version=8,
    )
    onnx.checker.check_model(model)
    return model, k, n_classes is not None


def run(model, k, classifier, x):
    sess = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    n = x.shape[0]
    scores = np.full((n, k), SENTINEL, dtype=np.float32)
    labels = np.full((n,), -1, dtype=np.int64)
    io = sess.io_binding()
    io.bind_cpu_input("X", x)
    io.bind_output("scores", "cpu", 0, np.float32, list(scores.shape), scores.ctypes.data)
    if classifier:
        io.bind_output("label", "cpu", 0, np.int64, list(labels.shape), labels.ctypes.data)
    sess.run_with_iobinding(io)
    scores = np.where(scores == SENTINEL, np.float32(0.0), scores)
    return (labels.tolist() if classifier else []), scores.reshape(-1)


def same(a, b):
    a, b = np.float32(a), np.float32(b)
    return (np.isnan(a) and np.isnan(b)) or a.tobytes() == b.tobytes() or (a == b)


def rust_f32(v):
    v = np.float32(v)
    if np.isnan(v):
        return "f32::NAN"
    if np.isinf(v):
        return "f32::INFINITY" if v > 0 else "f32::NEG_INFINITY"
    s = np.format_float_positional(v, unique=True, trim="0")
    if s.endswith("."):
        s += "0"
    if "." not in s:
        s += ".0"
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the expected tables")
    args = ap.parse_args()

    text = TESTS.read_text()
    at = text.index(MARKER)
    head, section = text[:at], text[at:]
    cases = 0
    differ = []
    out = []
    pos = 0
    for fn in TEST_FN.finditer(section):
        name, body = fn.group(1), fn.group(2)
        nodes = parse_nodes(NODES.search(body).group(1))
        weights = parse_weights(WEIGHTS.search(body).group(1))
        xs = numbers(XS.search(body).group(1))
        for check in CHECK.finditer(body):
            n_features = int(check.group(8))
            dtype = np.float64 if check.group(1) == "check_f64" else np.float32
            x = np.array(xs, dtype=dtype).reshape(-1, n_features)
            model, k, classifier = build(nodes, weights, check)
            labels, scores = run(model, k, classifier, x)
            want_labels = [int(v) for v in numbers(check.group(9))]
            want_scores = numbers(check.group(10))
            cases += 1
            ok = labels == want_labels and len(scores) == len(want_scores) and all(
                same(g, w) for g, w in zip(scores, want_scores)
            )
            if not ok:
                differ.append(
                    f"{name} ({check.group(2)}, {check.group(6)}, base [{squash(check.group(7))}]):\n"
                    f"  onnxruntime: {labels} {[rust_f32(s) for s in scores]}\n"
                    f"  tests.rs:    {want_labels} {[rust_f32(s) for s in want_scores]}"
                )
            if args.write:
                # Replace the two expected arrays in place; rustfmt tidies the layout.
                s_lab, e_lab = check.span(9)
                s_sc, e_sc = check.span(10)
                base = fn.start(2)  # where `body` starts in `section`
                out.append(section[pos:base + s_lab])
                out.append(", ".join(str(v) for v in labels))
                out.append(section[base + e_lab:base + s_sc])
                out.append(", ".join(rust_f32(v) for v in scores))
                pos = base + e_sc
    if cases == 0:
        sys.exit(f"no generated cases found after {MARKER!r} in {TESTS}")
    if args.write:
        out.append(section[pos:])
        TESTS.write_text(head + "".join(out))
        print(f"tree_tables: wrote {cases} cases ({len(differ)} changed) into {TESTS}")
        return
    for d in differ:
        print(d, file=sys.stderr)
    print(
        f"tree_tables: {cases} cases, {cases - len(differ)} match onnxruntime "
        f"{ort.__version__} exactly, {len(differ)} differ"
    )
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
