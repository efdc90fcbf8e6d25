//! `qtool verify`: the checks that run without a GPU (discovery on real qtool outputs, the REF
//! check computed on the CPU for good and deliberately corrupted checkpoints, the bad-input and
//! no-GPU contract), and the GPU run itself, which prints `skipped: <reason>` here unless
//! `QTOOL_REQUIRE_GPU=1`.
//!
//! Checkpoints are made the way users make them: the seeded fixture of
//! `qtool_verify::fixture` (shapes every kernel accepts) through the built `qtool quantize`,
//! `repack` and `convert`; corruptions through `qtool_verify::corrupt`.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, run, stderr, stdout};
use qtool_quantizers::diff::Input;
use qtool_verify::corrupt::{corrupt, Corruption};
use qtool_verify::discover::{discover, input, IntFamily, LayerFormat, Nvfp4Layout};
use qtool_verify::fixture::{write_llama, LlamaDims};
use qtool_verify::reference::Reference;
use qtool_verify::report::Status;
use qtool_verify::runner::{verify_layer, RefContext};

/// Linear layers of the fixture that the default rules quantize (7 per block, 2 blocks).
const LINEARS: usize = 14;

struct Workspace {
    _dir: tempfile::TempDir,
    root: PathBuf,
    reference: PathBuf,
}

fn workspace() -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let reference = root.join("ref");
    write_llama(&reference, &LlamaDims::default(), 20251121).unwrap();
    Workspace { _dir: dir, root, reference }
}

impl Workspace {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Runs qtool with `{ref}` and `{out}` substituted, expecting success; returns `out`.
    fn make(&self, name: &str, args: &[&str]) -> PathBuf {
        let out = self.path(name);
        let (r, o) = (self.reference.to_str().unwrap(), out.to_str().unwrap());
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "{ref}" {
                    r
                } else if *a == "{out}" {
                    o
                } else {
                    a
                }
            })
            .collect();
        let res = run(&args);
        assert_eq!(res.status.code(), Some(0), "qtool {args:?}: {}", stderr(&res));
        out
    }

    fn gptq_sym(&self) -> PathBuf {
        self.make(
            "gptq_sym",
            &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16", "--layout", "gptq"],
        )
    }
}

/// Per layer: (name, status, failure reason) of the CPU-only REF check.
fn ref_check(cand: &Path, reference: &Path) -> Vec<(String, Status, Option<String>)> {
    let cc = qtool_formats::open(cand).unwrap();
    let rc = qtool_formats::open(reference).unwrap();
    let ci = input(&cc);
    let r = Reference::new("ref", Input::from_checkpoint(&rc), &ci).unwrap();
    let found = discover(&ci, &|_| true).unwrap();
    r.check(&found.layers).unwrap();
    found
        .layers
        .iter()
        .map(|l| {
            let cx = RefContext { reference: &r, candidate: &ci };
            let rep = verify_layer(l, &[1, 16], None, Some(cx)).unwrap();
            (rep.name, rep.status, rep.reason)
        })
        .collect()
}

#[test]
fn discovery_finds_every_layout_qtool_writes() {
    let ws = workspace();
    let gptq = IntFamily::Gptq { v2: false };
    let cases: Vec<(PathBuf, LayerFormat, usize)> = vec![
        (
            ws.make(
                "fp8.safetensors",
                &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_e4m3fn_scaled"],
            ),
            LayerFormat::Fp8 {
                e5m2: false,
                granularity: qtool_verify::discover::Fp8Granularity::Tensor,
            },
            LINEARS,
        ),
        (
            ws.make("fp8c", &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_channel"]),
            LayerFormat::Fp8 {
                e5m2: false,
                granularity: qtool_verify::discover::Fp8Granularity::Channel,
            },
            LINEARS,
        ),
        (
            ws.make("nv.safetensors", &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp4_scaled"]),
            LayerFormat::Nvfp4 { layout: Nvfp4Layout::Comfy },
            LINEARS,
        ),
        (
            ws.make(
                "nvm",
                &["quantize", "{ref}", "-o", "{out}", "--fmt", "nvfp4", "--layout", "modelopt"],
            ),
            LayerFormat::Nvfp4 { layout: Nvfp4Layout::ModelOpt },
            LINEARS,
        ),
        (
            ws.make(
                "awq",
                &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16", "--layout", "awq"],
            ),
            LayerFormat::Int {
                family: IntFamily::Awq,
                bits: 4,
                group: Some(128),
                act_order: false,
            },
            LINEARS,
        ),
        (
            ws.gptq_sym(),
            LayerFormat::Int { family: gptq, bits: 4, group: Some(128), act_order: false },
            LINEARS,
        ),
        (
            ws.make(
                "marlin",
                &[
                    "repack",
                    ws.path("gptq_sym").to_str().unwrap(),
                    "-o",
                    "{out}",
                    "--target",
                    "marlin",
                ],
            ),
            LayerFormat::Marlin { bits: 4, group: Some(128) },
            LINEARS,
        ),
    ];
    for (path, format, count) in cases {
        let c = qtool_formats::open(&path).unwrap();
        let found = discover(&input(&c), &|_| true).unwrap();
        assert_eq!(found.layers.len(), count, "{}", path.display());
        assert!(found.unrunnable.is_empty(), "{:?}", found.unrunnable);
        for l in &found.layers {
            assert_eq!(l.format, format, "{}", l.name);
            assert_eq!(l.dequantize().unwrap().len(), l.n * l.k);
        }
    }
    // A Q4_K_M GGUF: Q4_K and Q6_K layers (token_embd and output included), F32 norms left out.
    let gguf = ws.make("m.gguf", &["convert", "{ref}", "-o", "{out}", "--fmt", "q4_k_m"]);
    let c = qtool_formats::open(&gguf).unwrap();
    let found = discover(&input(&c), &|_| true).unwrap();
    let mut types: Vec<String> = found.layers.iter().map(|l| l.scheme.clone()).collect();
    types.sort();
    types.dedup();
    assert_eq!(types, ["Q4_K", "Q6_K"]);
    assert_eq!(found.layers.len(), LINEARS + 2);
}

#[test]
fn good_checkpoints_pass_the_ref_check_on_the_cpu() {
    let ws = workspace();
    let gptq = ws.gptq_sym();
    let made = vec![
        ws.make(
            "fp8.safetensors",
            &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_e4m3fn_scaled"],
        ),
        ws.make(
            "fp8l.safetensors",
            &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_e5m2_scaled"],
        ),
        ws.make("fp8ct", &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_channel"]),
        ws.make("nv.safetensors", &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp4_scaled"]),
        ws.make("nvct", &["quantize", "{ref}", "-o", "{out}", "--fmt", "nvfp4"]),
        ws.make(
            "gptq_asym",
            &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16", "--layout", "gptq", "--asym"],
        ),
        ws.make(
            "ct",
            &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16", "--group-size", "64"],
        ),
        ws.make("marlin", &["repack", gptq.to_str().unwrap(), "-o", "{out}", "--target", "marlin"]),
        ws.make("m.gguf", &["convert", "{ref}", "-o", "{out}", "--fmt", "q4_k_m"]),
        gptq,
    ];
    for path in made {
        let rows = ref_check(&path, &ws.reference);
        assert!(rows.len() >= LINEARS, "{}", path.display());
        for (name, status, reason) in rows {
            assert_eq!(status, Status::Pass, "{}: {name}: {reason:?}", path.display());
        }
    }
}

#[test]
fn each_corruption_is_caught_by_the_ref_check_on_the_cpu() {
    let ws = workspace();
    let gptq = ws.gptq_sym();
    let gptq_asym = ws.make(
        "gptq_asym",
        &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16", "--layout", "gptq", "--asym"],
    );
    let marlin =
        ws.make("marlin", &["repack", gptq.to_str().unwrap(), "-o", "{out}", "--target", "marlin"]);
    let awq =
        ws.make("awq", &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16", "--layout", "awq"]);
    let ct = ws.make("ct", &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16"]);
    let nv_comfy =
        ws.make("nv.safetensors", &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp4_scaled"]);
    let nv_ct = ws.make("nvct", &["quantize", "{ref}", "-o", "{out}", "--fmt", "nvfp4"]);
    let cases: Vec<(Corruption, &PathBuf, &str, Option<&str>)> = vec![
        (Corruption::FlipNibbles, &gptq, "gptq_flip", None),
        (Corruption::FlipNibbles, &marlin, "marlin_flip", Some("mlp.down_proj")),
        (Corruption::FlipNibbles, &awq, "awq_flip", None),
        (Corruption::FlipNibbles, &ct, "ct_flip", None),
        (Corruption::FlipNibbles, &nv_comfy, "nv_flip.safetensors", None),
        (Corruption::FlipNibbles, &nv_ct, "nvct_flip", None),
        (Corruption::ScalePermutation, &marlin, "marlin_sperm", Some("layers.1.")),
        (Corruption::ScalePermutation, &gptq, "gptq_sperm", None),
        (Corruption::ScalePermutation, &ct, "ct_sperm", None),
        (Corruption::ZeroPoints, &gptq, "gptq_v2", None),
        (Corruption::ZeroPoints, &gptq_asym, "gptq_asym_v2", None),
        (Corruption::UnswizzledScales, &nv_comfy, "nv_unswizzled.safetensors", Some("gate_proj")),
    ];
    for (kind, src, name, filter) in cases {
        let out = ws.path(name);
        let done = corrupt(src, &out, kind, filter).unwrap();
        if let Some(f) = filter {
            assert!(done.layers[0].contains(f), "{name}: {:?}", done.layers);
        }
        let rows = ref_check(&out, &ws.reference);
        for (layer, status, reason) in &rows {
            let hit = done.layers.contains(layer);
            let want = if hit { Status::Fail } else { Status::Pass };
            assert_eq!(*status, want, "{name} ({}): {layer}: {reason:?}", kind.name());
            if hit {
                assert!(reason.as_deref().unwrap_or("").contains("vs REF"), "{reason:?}");
            }
        }
        if kind == Corruption::ZeroPoints {
            assert_eq!(done.layers.len(), LINEARS, "the relabel affects every GPTQ layer");
        }
    }
}

#[test]
fn a_corruption_needs_an_eligible_layer() {
    let ws = workspace();
    let fp8 = ws.make(
        "fp8.safetensors",
        &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_e4m3fn_scaled"],
    );
    let err = corrupt(&fp8, &ws.path("x.safetensors"), Corruption::FlipNibbles, None).unwrap_err();
    assert!(err.to_string().contains("no layer to apply 'flip-nibbles'"), "{err}");
    assert!(!ws.path("x.safetensors").exists(), "nothing written when nothing applies");
}

/// Asserts the bad-input contract: exit 2, one `error:` line mentioning every `mentions`.
fn assert_refused(args: &[&str], mentions: &[&str]) {
    let out = run(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err:?}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for m in mentions {
        assert!(lines[0].contains(m), "'{m}' not in {err}");
    }
}

#[test]
fn verify_refuses_a_checkpoint_without_quantized_layers() {
    let p = fixture("tiny-llama");
    assert_refused(&["verify", p.to_str().unwrap()], &["tiny-llama", "no quantized linear layers"]);
}

#[test]
fn verify_refuses_a_filter_that_keeps_nothing() {
    let ws = workspace();
    let g = ws.gptq_sym();
    assert_refused(&["verify", g.to_str().unwrap(), "--filter", "nothing-matches"], &["kept none"]);
    assert_refused(
        &["verify", g.to_str().unwrap(), "--filter", "("],
        &["--filter", "invalid regular expression"],
    );
}

#[test]
fn verify_refuses_bad_batch_sizes() {
    let ws = workspace();
    let g = ws.gptq_sym();
    assert_refused(&["verify", g.to_str().unwrap(), "--batch", "0"], &["--batch"]);
    assert_refused(&["verify", g.to_str().unwrap(), "--batch", "1,100000"], &["--batch"]);
}

#[test]
fn verify_refuses_a_ref_that_does_not_match() {
    let ws = workspace();
    let g = ws.gptq_sym();
    let other = fixture("tiny-llama");
    assert_refused(
        &["verify", g.to_str().unwrap(), "--ref", other.to_str().unwrap()],
        &["--ref", "q_proj.weight", "has shape [64, 64]"],
    );
}

#[test]
fn verify_without_a_gpu_exits_2() {
    if qtool_kernels::probe().is_usable() {
        println!("skipped: a GPU is present (this test checks the no-GPU path)");
        return;
    }
    let ws = workspace();
    let g = ws.gptq_sym();
    assert_refused(&["verify", g.to_str().unwrap()], &["no usable GPU: "]);
}

/// On a GPU: every good checkpoint exits 0 with every layer passed; corrupted ones exit 1 and
/// name exactly the corrupted layers.
#[test]
fn verify_on_the_gpu() {
    if qtool_verify::gpu_or_skip("verify_on_the_gpu").is_none() {
        return;
    }
    let ws = workspace();
    let gptq = ws.gptq_sym();
    let marlin =
        ws.make("marlin", &["repack", gptq.to_str().unwrap(), "-o", "{out}", "--target", "marlin"]);
    let nv =
        ws.make("nv.safetensors", &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp4_scaled"]);
    let good = vec![
        ws.make(
            "fp8.safetensors",
            &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_e4m3fn_scaled"],
        ),
        ws.make("fp8c", &["quantize", "{ref}", "-o", "{out}", "--fmt", "fp8_channel"]),
        ws.make(
            "nvm",
            &["quantize", "{ref}", "-o", "{out}", "--fmt", "nvfp4", "--layout", "modelopt"],
        ),
        ws.make("nvct", &["quantize", "{ref}", "-o", "{out}", "--fmt", "nvfp4"]),
        ws.make("awq", &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16", "--layout", "awq"]),
        ws.make("ct", &["quantize", "{ref}", "-o", "{out}", "--fmt", "w4a16"]),
        ws.make("m.gguf", &["convert", "{ref}", "-o", "{out}", "--fmt", "q4_k_m"]),
        nv.clone(),
        gptq.clone(),
        marlin.clone(),
    ];
    let r = ws.reference.to_str().unwrap();
    for path in &good {
        let out =
            run(&["--json", "verify", path.to_str().unwrap(), "--ref", r, "--batch", "1,16,64"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}\n{}",
            path.display(),
            stdout(&out),
            stderr(&out)
        );
        let rep: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(rep["summary"]["failed"], 0, "{}", path.display());
        assert!(rep["summary"]["passed"].as_u64().unwrap() >= LINEARS as u64, "{}", path.display());
    }
    let bad = [
        (Corruption::FlipNibbles, &marlin, "marlin_flip"),
        (Corruption::ScalePermutation, &marlin, "marlin_sperm"),
        (Corruption::ZeroPoints, &gptq, "gptq_v2"),
        (Corruption::UnswizzledScales, &nv, "nv_unswizzled.safetensors"),
    ];
    for (kind, src, name) in bad {
        let out_path = ws.path(name);
        let done = corrupt(src, &out_path, kind, None).unwrap();
        let out =
            run(&["--json", "verify", out_path.to_str().unwrap(), "--ref", r, "--batch", "1,16"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        let rep: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(rep["summary"]["failing"], serde_json::json!(done.layers), "{name}");
    }
}
