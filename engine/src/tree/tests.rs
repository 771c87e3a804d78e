//! Unit tests of the tree kernel. The expected outputs of the generated cases below
//! were produced by onnxruntime 1.31.1 (the Python wheel) on the same attributes and
//! inputs, so they pin every post_transform / base_values / binary special case to
//! what onnxruntime does. Where onnxruntime leaves a score unwritten (the second
//! column of a one-column binary model under PROBIT, or without the binary case),
//! we write 0 and the expectation says 0.
//!
//! `engine/tests/tree_tables.py` is the generator: it reads each generated case's
//! ensemble and input from this file, runs it on onnxruntime, and checks (or with
//! `--write` rewrites, then `rustfmt`) the expected labels and scores, bit for bit.

use super::*;

type NodeTuple = (i64, i64, i64, &'static str, f64, i64, i64, bool);

fn nodes(rows: &[NodeTuple]) -> Vec<NodeRow> {
    rows.iter()
        .map(
            |&(tree, id, feature, mode, value, true_id, false_id, missing_tracks_true)| NodeRow {
                tree,
                id,
                feature,
                mode: NodeMode::parse(mode).expect("known mode"),
                value,
                true_id,
                false_id,
                missing_tracks_true,
            },
        )
        .collect()
}

fn weights(rows: &[(i64, i64, i64, f64)]) -> Vec<WeightRow> {
    rows.iter()
        .map(|&(tree, node, target, weight)| WeightRow {
            tree,
            node,
            target,
            weight,
        })
        .collect()
}

/// Classifier with labels 10, 13, 16, … (distinct from the class indices on purpose).
fn classifier(n: usize) -> EnsembleKind {
    EnsembleKind::Classifier {
        labels: ClassLabels::Int64((0..n as i64).map(|i| 10 + 3 * i).collect()),
    }
}

fn regressor(n_targets: usize, aggregate: Aggregate) -> EnsembleKind {
    EnsembleKind::Regressor {
        n_targets,
        aggregate,
    }
}

fn spec(
    kind: EnsembleKind,
    post: PostTransform,
    base: &[f64],
    nodes: &[NodeRow],
    weights: &[WeightRow],
) -> EnsembleSpec {
    EnsembleSpec {
        kind,
        post_transform: post,
        base_values: base.to_vec(),
        nodes: nodes.to_vec(),
        weights: weights.to_vec(),
    }
}

fn run(e: &TreeEnsemble, rows: Rows<'_>, n_rows: usize, n_features: usize) -> (Vec<i64>, Vec<f32>) {
    let mut labels = vec![-1; if e.is_classifier() { n_rows } else { 0 }];
    let mut scores = vec![f32::NAN; n_rows * e.n_scores()];
    e.eval(
        rows,
        n_rows,
        n_features,
        &mut labels,
        &mut scores,
        &mut Scratch::default(),
    )
    .expect("eval");
    (labels, scores)
}

fn same(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn assert_outputs(got: &(Vec<i64>, Vec<f32>), labels: &[i64], scores: &[f32], spec: &EnsembleSpec) {
    assert_eq!(got.0, labels, "labels of {spec:?}");
    assert_eq!(got.1.len(), scores.len(), "scores of {spec:?}");
    for (i, (&g, &s)) in got.1.iter().zip(scores).enumerate() {
        assert!(
            same(g, s),
            "score {i}: got {g}, onnxruntime says {s}; all: {:?} vs {scores:?} for {spec:?}",
            got.1
        );
    }
}

/// Evaluates all rows at once and each row alone (the two walk strategies); both must
/// give onnxruntime's outputs.
fn check(spec: &EnsembleSpec, x: &[f32], n_features: usize, labels: &[i64], scores: &[f32]) {
    let e = TreeEnsemble::build(spec).expect("build");
    let n = x.len() / n_features;
    assert_outputs(&run(&e, Rows::F32(x), n, n_features), labels, scores, spec);
    let k = e.n_scores();
    for r in 0..n {
        let one = run(
            &e,
            Rows::F32(&x[r * n_features..(r + 1) * n_features]),
            1,
            n_features,
        );
        let want_labels = if labels.is_empty() {
            &[][..]
        } else {
            &labels[r..r + 1]
        };
        assert_outputs(&one, want_labels, &scores[r * k..(r + 1) * k], spec);
    }
}

fn check_f64(spec: &EnsembleSpec, x: &[f64], n_features: usize, labels: &[i64], scores: &[f32]) {
    let e = TreeEnsemble::build(spec).expect("build");
    assert_outputs(
        &run(&e, Rows::F64(x), x.len() / n_features, n_features),
        labels,
        scores,
        spec,
    );
}

// === structure and errors ===

fn stump_nodes() -> Vec<NodeRow> {
    nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ])
}

fn build_err(spec: &EnsembleSpec) -> BuildError {
    TreeEnsemble::build(spec).expect_err("must not build")
}

#[test]
fn contradictory_attributes_are_invalid() {
    let w = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let reg = |nodes: Vec<NodeRow>, w: &[WeightRow]| {
        spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            w,
        )
    };

    let mut dup = stump_nodes();
    dup[2].id = 1;
    assert!(
        matches!(build_err(&reg(dup, &w)), BuildError::Invalid(m) if m.contains("listed twice"))
    );

    let mut dangling = stump_nodes();
    dangling[0].false_id = 7;
    assert!(
        matches!(build_err(&reg(dangling, &w)), BuildError::Invalid(m) if m.contains("node 7"))
    );

    let mut selfish = stump_nodes();
    selfish[0].true_id = 0;
    assert!(matches!(build_err(&reg(selfish, &w)), BuildError::Invalid(m) if m.contains("itself")));

    let lonely_leaf = weights(&[(0, 1, 0, 1.0)]);
    assert!(
        matches!(build_err(&reg(stump_nodes(), &lonely_leaf)), BuildError::Invalid(m) if m.contains("no weight"))
    );

    let ghost = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0), (3, 0, 0, 1.0)]);
    assert!(
        matches!(build_err(&reg(stump_nodes(), &ghost)), BuildError::Invalid(m) if m.contains("does not exist"))
    );

    let beyond = weights(&[(0, 1, 0, 1.0), (0, 2, 1, 2.0)]);
    assert!(
        matches!(build_err(&reg(stump_nodes(), &beyond)), BuildError::Invalid(m) if m.contains("targets output 1"))
    );

    let three_bases = spec(
        classifier(2),
        PostTransform::None,
        &[0.0; 3],
        &stump_nodes(),
        &w,
    );
    assert!(
        matches!(build_err(&three_bases), BuildError::Invalid(m) if m.contains("3 base values"))
    );
    let two_of_three = spec(
        classifier(3),
        PostTransform::None,
        &[0.0; 2],
        &stump_nodes(),
        &w,
    );
    assert!(matches!(build_err(&two_of_three), BuildError::Invalid(_)));

    let mut negative_feature = stump_nodes();
    negative_feature[0].feature = -1;
    assert!(matches!(
        build_err(&reg(negative_feature, &w)),
        BuildError::Invalid(_)
    ));

    assert!(matches!(
        build_err(&reg(Vec::new(), &[])),
        BuildError::Invalid(_)
    ));
}

#[test]
fn cycles_and_one_class_classifiers_are_refused() {
    let cycle = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "BRANCH_LEQ", 0.0, 0, 2, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let w = weights(&[(0, 2, 0, 1.0)]);
    let e = build_err(&spec(
        regressor(1, Aggregate::Sum),
        PostTransform::None,
        &[],
        &cycle,
        &w,
    ));
    assert!(matches!(e, BuildError::Unsupported(_)), "{e}");

    let one = spec(
        classifier(1),
        PostTransform::None,
        &[],
        &stump_nodes(),
        &weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]),
    );
    assert!(matches!(build_err(&one), BuildError::Unsupported(_)));
}

#[test]
fn rows_too_short_for_the_trees_are_an_error() {
    let mut n = stump_nodes();
    n[0].feature = 3;
    let e = TreeEnsemble::build(&spec(
        regressor(1, Aggregate::Sum),
        PostTransform::None,
        &[],
        &n,
        &weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]),
    ))
    .unwrap();
    assert_eq!(e.min_features(), 4);
    let err = e
        .eval(
            Rows::F32(&[0.0; 3]),
            1,
            3,
            &mut [],
            &mut [0.0],
            &mut Scratch::default(),
        )
        .unwrap_err();
    assert!(err.contains("feature 3"), "{err}");
}

/// A small deterministic generator, so the forest below needs no dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

/// A random forest of uneven trees, its node attributes listed in shuffled order.
fn random_forest(rng: &mut Lcg, n_trees: i64, n_features: i64, n_classes: i64) -> EnsembleSpec {
    let mut rows = Vec::new();
    let mut ws = Vec::new();
    for tree in 0..n_trees {
        let mut next_id = 1;
        let mut stack = vec![(0i64, 0u32)];
        let mut tree_rows = Vec::new();
        while let Some((id, depth)) = stack.pop() {
            if depth >= 6 || (depth > 1 && rng.unit() < 0.3) {
                tree_rows.push((tree, id, 0, "LEAF", 0.0, 0, 0, false));
                for c in 0..n_classes {
                    if rng.unit() < 0.7 {
                        ws.push((tree, id, c, (rng.unit() * 2.0 - 0.5) as f32 as f64));
                    }
                }
                if !ws.iter().any(|w| w.0 == tree && w.1 == id) {
                    ws.push((tree, id, 0, 0.5));
                }
            } else {
                let (t, f) = (next_id, next_id + 1);
                next_id += 2;
                let feature = (rng.next() % n_features as u64) as i64;
                tree_rows.push((
                    tree,
                    id,
                    feature,
                    "BRANCH_LEQ",
                    (rng.unit() * 2.0 - 1.0) as f32 as f64,
                    t,
                    f,
                    false,
                ));
                stack.push((t, depth + 1));
                stack.push((f, depth + 1));
            }
        }
        // Keep the root first (onnxruntime takes the first listed node as the root) and shuffle the rest.
        for i in (2..tree_rows.len()).rev() {
            let j = 1 + (rng.next() as usize % i);
            tree_rows.swap(i, j);
        }
        rows.extend(tree_rows);
    }
    spec(
        classifier(n_classes as usize),
        PostTransform::Softmax,
        &[],
        &nodes(&rows),
        &weights(&ws),
    )
}

#[test]
fn batches_match_row_by_row_evaluation_across_lanes_and_blocks() {
    let mut rng = Lcg(7);
    // 21 trees: two full lane groups and a remainder; 3 classes: sparse leaves.
    let forest = random_forest(&mut rng, 21, 6, 3);
    let e = TreeEnsemble::build(&forest).unwrap();
    // 300 rows: two full row blocks and a partial one, with a lane remainder.
    let n = 300;
    let x: Vec<f32> = (0..n * 6)
        .map(|_| (rng.unit() * 2.0 - 1.0) as f32)
        .collect();
    let (labels, scores) = run(&e, Rows::F32(&x), n, 6);
    for r in 0..n {
        let (l, s) = run(&e, Rows::F32(&x[r * 6..(r + 1) * 6]), 1, 6);
        assert_eq!(l[0], labels[r], "row {r}");
        assert_eq!(s[..], scores[r * 3..(r + 1) * 3], "row {r}");
    }
    // The same forest on f64 input gives the same answers (the thresholds are f32 values).
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    assert_eq!(run(&e, Rows::F64(&x64), n, 6).0, labels);
}

#[test]
fn scratch_is_reused_across_calls_of_different_sizes() {
    let mut rng = Lcg(11);
    let e = TreeEnsemble::build(&random_forest(&mut rng, 9, 4, 2)).unwrap();
    let x: Vec<f32> = (0..40 * 4)
        .map(|_| (rng.unit() * 2.0 - 1.0) as f32)
        .collect();
    let mut scratch = Scratch::default();
    for n in [40, 1, 17, 40, 3] {
        let mut labels = vec![0; n];
        let mut scores = vec![0.0; n * 2];
        e.eval(
            Rows::F32(&x[..n * 4]),
            n,
            4,
            &mut labels,
            &mut scores,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(
            (labels, scores),
            run(&e, Rows::F32(&x[..n * 4]), n, 4),
            "{n} rows"
        );
    }
}

// === generated from onnxruntime 1.31.1 ===

/// Binary classifier, class 0 weights only, all positive (scikit-learn's binary random forest), under every post_transform.
#[test]
fn binary_one_column_positive() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 0.30000001192092896), (0, 2, 0, 0.800000011920929)]);
    let x = [-1.0, 1.0];
    check(
        &spec(classifier(2), PostTransform::None, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[0.7, 0.3, 0.19999999, 0.8],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.4255575, 0.5744425, 0.3100255, 0.6899745],
    );
    check(
        &spec(classifier(2), PostTransform::Softmax, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[0.7, 0.3, 0.19999999, 0.8],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.7, 0.3, 0.19999999, 0.8],
    );
    check(
        &spec(classifier(2), PostTransform::Probit, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[-0.5244459, 0.0, 0.8417561, 0.0],
    );
}

/// Binary classifier, class 0 weights only, mixed signs, under every post_transform.
#[test]
fn binary_one_column_mixed() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, -0.30000001192092896),
        (0, 2, 0, 0.800000011920929),
    ]);
    let x = [-1.0, 1.0];
    check(
        &spec(classifier(2), PostTransform::None, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[0.3, -0.3, -0.8, 0.8],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.5744425, 0.4255575, 0.3100255, 0.6899745],
    );
    check(
        &spec(classifier(2), PostTransform::Softmax, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[0.3, -0.3, -0.8, 0.8],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.3, -0.3, -0.8, 0.8],
    );
    check(
        &spec(classifier(2), PostTransform::Probit, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[f32::NAN, 0.0, 0.8417561, 0.0],
    );
}

/// Binary classifier, class 0 weights, one base value, under every post_transform.
#[test]
fn binary_one_column_positive_one_base() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 0.30000001192092896), (0, 2, 0, 0.800000011920929)]);
    let x = [-1.0, 1.0];
    check(
        &spec(
            classifier(2),
            PostTransform::None,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.6, 0.4, 0.099999964, 0.90000004],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.40131235, 0.59868765, 0.28905052, 0.7109495],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Softmax,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.6, 0.4, 0.099999964, 0.90000004],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.6, 0.4, 0.099999964, 0.90000004],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Probit,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[-0.2533535, 0.0, 1.2817132, 0.0],
    );
}

/// Binary classifier, class 0 weights, mixed, one base value (scikit-learn's binary gradient boosting), under every post_transform.
#[test]
fn binary_one_column_mixed_one_base() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, -0.30000001192092896),
        (0, 2, 0, 0.800000011920929),
    ]);
    let x = [-1.0, 1.0];
    check(
        &spec(
            classifier(2),
            PostTransform::None,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.20000002, -0.20000002, -0.90000004, 0.90000004],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.549834, 0.450166, 0.28905052, 0.7109495],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Softmax,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.20000002, -0.20000002, -0.90000004, 0.90000004],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.20000002, -0.20000002, -0.90000004, 0.90000004],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Probit,
            &[0.10000000149011612],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[f32::NAN, 0.0, 1.2817132, 0.0],
    );
}

/// Binary classifier, class 0 weights, two base values: 'binary as multiclass', the unscored class reads 0, under every post_transform.
#[test]
fn binary_one_column_mixed_two_bases() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, -0.30000001192092896),
        (0, 2, 0, 0.800000011920929),
    ]);
    let x = [-1.0, 1.0];
    check(
        &spec(
            classifier(2),
            PostTransform::None,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[-0.20000002, 0.0, 0.90000004, 0.0],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.450166, 0.5, 0.7109495, 0.5],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Softmax,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.450166, 0.549834, 0.7109495, 0.2890505],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[1.0, 0.0, 1.0, 0.0],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Probit,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[f32::NAN, f32::NEG_INFINITY, 1.2817132, f32::NEG_INFINITY],
    );
}

/// Binary classifier, class 1 weights only, under every post_transform.
#[test]
fn binary_class_one_column_positive() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 1, 0.30000001192092896), (0, 2, 1, 0.800000011920929)]);
    let x = [-1.0, 1.0];
    check(
        &spec(classifier(2), PostTransform::None, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[0.0, 0.3, 0.0, 0.8],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.5, 0.5744425, 0.5, 0.6899745],
    );
    check(
        &spec(classifier(2), PostTransform::Softmax, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[0.42555746, 0.5744425, 0.31002554, 0.6899745],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 13],
        &[0.0, 1.0, 0.0, 1.0],
    );
    check(
        &spec(classifier(2), PostTransform::Probit, &[], &nodes, &weights),
        &x,
        1,
        &[10, 13],
        &[f32::NEG_INFINITY, -0.5244459, f32::NEG_INFINITY, 0.8417561],
    );
}

/// Binary classifier, class 1 weights only, two base values, under every post_transform.
#[test]
fn binary_class_one_column_mixed_two_bases() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 1, -0.30000001192092896),
        (0, 2, 1, 0.800000011920929),
    ]);
    let x = [-1.0, 1.0];
    check(
        &spec(
            classifier(2),
            PostTransform::None,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[13, 13],
        &[0.0, 0.2, 0.0, 0.2],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[13, 13],
        &[0.5, 0.54983395, 0.5, 0.54983395],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Softmax,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[13, 13],
        &[0.450166, 0.54983395, 0.450166, 0.54983395],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[13, 13],
        &[0.0, 1.0, 0.0, 1.0],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Probit,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[13, 13],
        &[f32::NEG_INFINITY, -0.8417561, f32::NEG_INFINITY, -0.8417561],
    );
}

/// Binary classifier, weights for both classes: the label is the literal 1 when the class-1 score is positive, under every post_transform.
#[test]
fn binary_two_columns_positive() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 0.30000001192092896),
        (0, 1, 1, 0.699999988079071),
        (0, 2, 0, 0.800000011920929),
        (0, 2, 1, 0.20000000298023224),
    ]);
    let x = [-1.0, 1.0];
    check(
        &spec(classifier(2), PostTransform::None, &[], &nodes, &weights),
        &x,
        1,
        &[1, 1],
        &[0.3, 0.7, 0.8, 0.2],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[1, 1],
        &[0.5744425, 0.66818774, 0.6899745, 0.54983395],
    );
    check(
        &spec(classifier(2), PostTransform::Softmax, &[], &nodes, &weights),
        &x,
        1,
        &[1, 1],
        &[0.40131232, 0.59868765, 0.6456563, 0.35434368],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[1, 1],
        &[0.40131232, 0.59868765, 0.6456563, 0.35434368],
    );
    check(
        &spec(classifier(2), PostTransform::Probit, &[], &nodes, &weights),
        &x,
        1,
        &[1, 1],
        &[-0.5244459, 0.5244459, 0.8417561, -0.8417561],
    );
}

/// Binary classifier, weights for both classes and two base values, under every post_transform.
#[test]
fn binary_two_columns_mixed_two_bases() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, -0.30000001192092896),
        (0, 1, 1, 0.699999988079071),
        (0, 2, 0, 0.800000011920929),
        (0, 2, 1, -0.20000000298023224),
    ]);
    let x = [-1.0, 1.0];
    check(
        &spec(
            classifier(2),
            PostTransform::None,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[0, 1],
        &[0.10000001, -0.10000001, -1.0, 1.0],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Logistic,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[0, 1],
        &[0.5249792, 0.47502083, 0.2689414, 0.7310586],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Softmax,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[0, 1],
        &[0.549834, 0.450166, 0.11920292, 0.880797],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::SoftmaxZero,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[0, 1],
        &[0.549834, 0.450166, 0.11920292, 0.880797],
    );
    check(
        &spec(
            classifier(2),
            PostTransform::Probit,
            &[0.10000000149011612, 0.20000000298023224],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[0, 1],
        &[-1.2817129, f32::NAN, f32::NAN, f32::INFINITY],
    );
}

/// Three classes, sparse leaves (a class may be unscored), no base values, under every post_transform.
#[test]
fn multiclass() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 0.5),
        (0, 1, 1, -0.20000000298023224),
        (0, 2, 2, 1.5),
        (1, 1, 0, 0.25),
        (1, 2, 1, 0.75),
        (1, 2, 2, -0.5),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(classifier(3), PostTransform::None, &[], &nodes, &weights),
        &x,
        1,
        &[10, 16, 16],
        &[0.75, -0.2, 0.0, 0.25, 0.0, 1.5, 0.0, 0.75, 1.0],
    );
    check(
        &spec(
            classifier(3),
            PostTransform::Logistic,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 16, 16],
        &[
            0.6791787, 0.45016605, 0.5, 0.5621765, 0.5, 0.81757444, 0.5, 0.6791787, 0.7310586,
        ],
    );
    check(
        &spec(classifier(3), PostTransform::Softmax, &[], &nodes, &weights),
        &x,
        1,
        &[10, 16, 16],
        &[
            0.53789246, 0.2080251, 0.2540824, 0.18978415, 0.14780405, 0.6624118, 0.17137133,
            0.3627931, 0.46583554,
        ],
    );
    check(
        &spec(
            classifier(3),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 16, 16],
        &[
            0.7211152, 0.27888483, 0.0, 0.22270015, 0.0, 0.7772999, 0.0, 0.4378235, 0.5621765,
        ],
    );
    check(
        &spec(classifier(3), PostTransform::Probit, &[], &nodes, &weights),
        &x,
        1,
        &[10, 16, 16],
        &[
            0.6745743,
            f32::NAN,
            f32::NEG_INFINITY,
            -0.6745743,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::NEG_INFINITY,
            0.6745743,
            f32::INFINITY,
        ],
    );
}

/// Three classes with base values (scikit-learn's multi-class gradient boosting: SOFTMAX), under every post_transform.
#[test]
fn multiclass_base_values() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 0.5),
        (0, 1, 1, -0.20000000298023224),
        (0, 2, 2, 1.5),
        (1, 1, 0, 0.25),
        (1, 2, 1, 0.75),
        (1, 2, 2, -0.5),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            classifier(3),
            PostTransform::None,
            &[
                0.10000000149011612,
                -0.20000000298023224,
                0.30000001192092896,
            ],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 16, 16],
        &[0.85, -0.4, 0.3, 0.35, -0.2, 1.8, 0.1, 0.55, 1.3],
    );
    check(
        &spec(
            classifier(3),
            PostTransform::Logistic,
            &[
                0.10000000149011612,
                -0.20000000298023224,
                0.30000001192092896,
            ],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 16, 16],
        &[
            0.7005672, 0.40131235, 0.5744425, 0.5866176, 0.45016605, 0.8581489, 0.5249792,
            0.6341356, 0.785835,
        ],
    );
    check(
        &spec(
            classifier(3),
            PostTransform::Softmax,
            &[
                0.10000000149011612,
                -0.20000000298023224,
                0.30000001192092896,
            ],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 16, 16],
        &[
            0.5366377, 0.15374929, 0.30961302, 0.171231, 0.09879168, 0.7299773, 0.16982459,
            0.26633796, 0.56383747,
        ],
    );
    check(
        &spec(
            classifier(3),
            PostTransform::SoftmaxZero,
            &[
                0.10000000149011612,
                -0.20000000298023224,
                0.30000001192092896,
            ],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 16, 16],
        &[
            0.5366377, 0.15374929, 0.30961302, 0.171231, 0.09879168, 0.7299773, 0.16982459,
            0.26633796, 0.56383747,
        ],
    );
    check(
        &spec(
            classifier(3),
            PostTransform::Probit,
            &[
                0.10000000149011612,
                -0.20000000298023224,
                0.30000001192092896,
            ],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[10, 16, 16],
        &[
            1.0366136,
            f32::NAN,
            -0.5244459,
            -0.38534024,
            f32::NAN,
            f32::NAN,
            -1.2817129,
            0.12566201,
            f32::NAN,
        ],
    );
}

/// One target, SUM: plain, with a base value, and under PROBIT (the only transform one target gets).
#[test]
fn regressor_sum() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 2, 0, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.5, -0.5, 3.0],
    );
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[3.0, 0.0, 3.5],
    );
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::Logistic,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[3.0, 0.0, 3.5],
    );
}

/// One target, SUM, PROBIT.
#[test]
fn regressor_sum_probit() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 0.20000000298023224),
        (0, 2, 0, -0.10000000149011612),
        (1, 1, 0, 0.05000000074505806),
        (1, 2, 0, 0.4000000059604645),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::Probit,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[-0.6745743, f32::NAN, -0.5244459],
    );
}

/// One target, AVERAGE: plain, with a base value, and under PROBIT (the only transform one target gets).
#[test]
fn regressor_average() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 2, 0, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Average),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.25, -0.25, 1.5],
    );
    check(
        &spec(
            regressor(1, Aggregate::Average),
            PostTransform::None,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.75, 0.25, 2.0],
    );
    check(
        &spec(
            regressor(1, Aggregate::Average),
            PostTransform::Logistic,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.75, 0.25, 2.0],
    );
}

/// One target, AVERAGE, PROBIT.
#[test]
fn regressor_average_probit() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 0.20000000298023224),
        (0, 2, 0, -0.10000000149011612),
        (1, 1, 0, 0.05000000074505806),
        (1, 2, 0, 0.4000000059604645),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Average),
            PostTransform::Probit,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[-1.1505355, f32::NAN, -1.0366131],
    );
}

/// One target, MIN: plain, with a base value, and under PROBIT (the only transform one target gets).
#[test]
fn regressor_min() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 2, 0, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Min),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[0.5, -1.0, -1.0],
    );
    check(
        &spec(
            regressor(1, Aggregate::Min),
            PostTransform::None,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, -0.5, -0.5],
    );
    check(
        &spec(
            regressor(1, Aggregate::Min),
            PostTransform::Logistic,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, -0.5, -0.5],
    );
}

/// One target, MIN, PROBIT.
#[test]
fn regressor_min_probit() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 0.20000000298023224),
        (0, 2, 0, -0.10000000149011612),
        (1, 1, 0, 0.05000000074505806),
        (1, 2, 0, 0.4000000059604645),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Min),
            PostTransform::Probit,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[-1.6446697, f32::NAN, f32::NAN],
    );
}

/// One target, MAX: plain, with a base value, and under PROBIT (the only transform one target gets).
#[test]
fn regressor_max() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 2, 0, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Max),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 0.5, 4.0],
    );
    check(
        &spec(
            regressor(1, Aggregate::Max),
            PostTransform::None,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.5, 1.0, 4.5],
    );
    check(
        &spec(
            regressor(1, Aggregate::Max),
            PostTransform::Logistic,
            &[0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.5, 1.0, 4.5],
    );
}

/// One target, MAX, PROBIT.
#[test]
fn regressor_max_probit() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 0.20000000298023224),
        (0, 2, 0, -0.10000000149011612),
        (1, 1, 0, 0.05000000074505806),
        (1, 2, 0, 0.4000000059604645),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(1, Aggregate::Max),
            PostTransform::Probit,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[-0.8417561, -1.6446697, -0.2533535],
    );
}

/// Two targets, SUM, with and without base values, several transforms; an unscored target reads 0.
#[test]
fn regressor_two_targets_sum() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 1, 1, 1.0),
        (0, 2, 1, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
        (1, 2, 1, 0.25),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(2, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.5, 1.0, 0.5, -1.0, 4.0, -0.75],
    );
    check(
        &spec(
            regressor(2, Aggregate::Sum),
            PostTransform::None,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[3.0, 0.5, 1.0, -1.5, 4.5, -1.25],
    );
    check(
        &spec(
            regressor(2, Aggregate::Sum),
            PostTransform::Softmax,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.81757444,
            0.18242551,
            0.81757444,
            0.18242551,
            0.9914225,
            0.008577485,
        ],
    );
    check(
        &spec(
            regressor(2, Aggregate::Sum),
            PostTransform::Logistic,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.95257413, 0.62245935, 0.7310586, 0.18242556, 0.9890131, 0.22270012,
        ],
    );
    check(
        &spec(
            regressor(2, Aggregate::Sum),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.81757444,
            0.18242551,
            0.81757444,
            0.18242551,
            0.9914225,
            0.008577485,
        ],
    );
}

/// Two targets, AVERAGE, with and without base values, several transforms; an unscored target reads 0.
#[test]
fn regressor_two_targets_average() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 1, 1, 1.0),
        (0, 2, 1, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
        (1, 2, 1, 0.25),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(2, Aggregate::Average),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.25, 0.5, 0.25, -0.5, 2.0, -0.375],
    );
    check(
        &spec(
            regressor(2, Aggregate::Average),
            PostTransform::None,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.75, 0.0, 0.75, -1.0, 2.5, -0.875],
    );
    check(
        &spec(
            regressor(2, Aggregate::Average),
            PostTransform::Softmax,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.6791787, 0.3208213, 0.6791787, 0.3208213, 0.91490096, 0.08509904,
        ],
    );
    check(
        &spec(
            regressor(2, Aggregate::Average),
            PostTransform::Logistic,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[0.85195273, 0.5, 0.6791787, 0.2689414, 0.9241418, 0.29421496],
    );
    check(
        &spec(
            regressor(2, Aggregate::Average),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.6791787, 0.3208213, 0.6791787, 0.3208213, 0.91490096, 0.08509904,
        ],
    );
}

/// Two targets, MIN, with and without base values, several transforms; an unscored target reads 0.
#[test]
fn regressor_two_targets_min() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 1, 1, 1.0),
        (0, 2, 1, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
        (1, 2, 1, 0.25),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(2, Aggregate::Min),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[0.5, 1.0, 0.5, -1.0, 4.0, -1.0],
    );
    check(
        &spec(
            regressor(2, Aggregate::Min),
            PostTransform::None,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 0.5, 1.0, -1.5, 4.5, -1.5],
    );
    check(
        &spec(
            regressor(2, Aggregate::Min),
            PostTransform::Softmax,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.37754068,
            0.62245935,
            0.81757444,
            0.18242551,
            0.9933072,
            0.006692851,
        ],
    );
    check(
        &spec(
            regressor(2, Aggregate::Min),
            PostTransform::Logistic,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.7310586, 0.62245935, 0.7310586, 0.18242556, 0.9890131, 0.18242556,
        ],
    );
    check(
        &spec(
            regressor(2, Aggregate::Min),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.37754068,
            0.62245935,
            0.81757444,
            0.18242551,
            0.9933072,
            0.006692851,
        ],
    );
}

/// Two targets, MAX, with and without base values, several transforms; an unscored target reads 0.
#[test]
fn regressor_two_targets_max() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
        (1, 0, 0, "BRANCH_LEQ", 0.5, 1, 2, false),
        (1, 1, 0, "LEAF", 0.0, 0, 0, false),
        (1, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 1, 0, 2.0),
        (0, 1, 1, 1.0),
        (0, 2, 1, -1.0),
        (1, 1, 0, 0.5),
        (1, 2, 0, 4.0),
        (1, 2, 1, 0.25),
    ]);
    let x = [-1.0, 0.25, 1.0];
    check(
        &spec(
            regressor(2, Aggregate::Max),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 1.0, 0.5, -1.0, 4.0, 0.25],
    );
    check(
        &spec(
            regressor(2, Aggregate::Max),
            PostTransform::None,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.5, 0.5, 1.0, -1.5, 4.5, -0.25],
    );
    check(
        &spec(
            regressor(2, Aggregate::Max),
            PostTransform::Softmax,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.7310586, 0.26894143, 0.81757444, 0.18242551, 0.97702265, 0.02297737,
        ],
    );
    check(
        &spec(
            regressor(2, Aggregate::Max),
            PostTransform::Logistic,
            &[0.5, -0.5],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.9241418, 0.62245935, 0.7310586, 0.18242556, 0.9890131, 0.43782347,
        ],
    );
    check(
        &spec(
            regressor(2, Aggregate::Max),
            PostTransform::SoftmaxZero,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[
            0.7310586, 0.26894143, 0.81757444, 0.18242551, 0.97702265, 0.02297737,
        ],
    );
}

/// BRANCH_LEQ, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_leq() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 1.0, 2.0, 2.0],
    );
}

/// BRANCH_LEQ with missing_value_tracks_true, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_leq_nan_true() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.0, 1, 2, true),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 1.0, 2.0, 1.0],
    );
}

/// BRANCH_LT, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_lt() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LT", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 2.0, 2.0, 2.0],
    );
}

/// BRANCH_LT with missing_value_tracks_true, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_lt_nan_true() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LT", 0.0, 1, 2, true),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 2.0, 2.0, 1.0],
    );
}

/// BRANCH_GTE, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_gte() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_GTE", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 1.0, 1.0, 2.0],
    );
}

/// BRANCH_GTE with missing_value_tracks_true, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_gte_nan_true() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_GTE", 0.0, 1, 2, true),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 1.0, 1.0, 1.0],
    );
}

/// BRANCH_GT, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_gt() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_GT", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 2.0, 1.0, 2.0],
    );
}

/// BRANCH_GT with missing_value_tracks_true, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_gt_nan_true() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_GT", 0.0, 1, 2, true),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 2.0, 1.0, 1.0],
    );
}

/// BRANCH_EQ, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_eq() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_EQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 1.0, 2.0, 2.0],
    );
}

/// BRANCH_EQ with missing_value_tracks_true, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_eq_nan_true() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_EQ", 0.0, 1, 2, true),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[2.0, 1.0, 2.0, 1.0],
    );
}

/// BRANCH_NEQ, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_neq() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_NEQ", 0.0, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 2.0, 1.0, 1.0],
    );
}

/// BRANCH_NEQ with missing_value_tracks_true, on a value below, at and above the threshold, and NaN.
#[test]
fn mode_neq_nan_true() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_NEQ", 0.0, 1, 2, true),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [-1.0, 0.0, 1.0, f32::NAN];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 2.0, 1.0, 1.0],
    );
}

/// Different comparisons per node, some tracking NaN to the true branch.
#[test]
fn mixed_modes_and_missing_values() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_GT", 0.0, 1, 2, true),
        (0, 1, 1, "BRANCH_EQ", 1.0, 3, 4, false),
        (0, 2, 1, "BRANCH_LT", 0.5, 5, 6, true),
        (0, 3, 0, "LEAF", 0.0, 0, 0, false),
        (0, 4, 0, "LEAF", 0.0, 0, 0, false),
        (0, 5, 0, "LEAF", 0.0, 0, 0, false),
        (0, 6, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 3, 0, 1.0),
        (0, 4, 0, 2.0),
        (0, 5, 0, 3.0),
        (0, 6, 0, 4.0),
    ]);
    let x = [
        1.0,
        1.0,
        1.0,
        0.0,
        -1.0,
        0.0,
        -1.0,
        1.0,
        f32::NAN,
        f32::NAN,
        f32::NAN,
        1.0,
        1.0,
        f32::NAN,
    ];
    check(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        2,
        &[],
        &[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 2.0],
    );
}

/// The same on f64 input.
#[test]
fn mixed_modes_double_input() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_GT", 0.0, 1, 2, true),
        (0, 1, 1, "BRANCH_EQ", 1.0, 3, 4, false),
        (0, 2, 1, "BRANCH_LT", 0.5, 5, 6, true),
        (0, 3, 0, "LEAF", 0.0, 0, 0, false),
        (0, 4, 0, "LEAF", 0.0, 0, 0, false),
        (0, 5, 0, "LEAF", 0.0, 0, 0, false),
        (0, 6, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[
        (0, 3, 0, 1.0),
        (0, 4, 0, 2.0),
        (0, 5, 0, 3.0),
        (0, 6, 0, 4.0),
    ]);
    let x = [
        1.0,
        1.0,
        1.0,
        0.0,
        -1.0,
        0.0,
        -1.0,
        1.0,
        f64::NAN,
        f64::NAN,
        f64::NAN,
        1.0,
        1.0,
        f64::NAN,
    ];
    check_f64(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        2,
        &[],
        &[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 2.0],
    );
}

/// f64 inputs just either side of an f32 threshold go where onnxruntime sends them.
#[test]
fn double_input_compares_in_double() {
    let nodes = nodes(&[
        (0, 0, 0, "BRANCH_LEQ", 0.10000000149011612, 1, 2, false),
        (0, 1, 0, "LEAF", 0.0, 0, 0, false),
        (0, 2, 0, "LEAF", 0.0, 0, 0, false),
    ]);
    let weights = weights(&[(0, 1, 0, 1.0), (0, 2, 0, 2.0)]);
    let x = [0.1, 0.10000000149011612, 0.1000000015];
    check_f64(
        &spec(
            regressor(1, Aggregate::Sum),
            PostTransform::None,
            &[],
            &nodes,
            &weights,
        ),
        &x,
        1,
        &[],
        &[1.0, 1.0, 2.0],
    );
}
