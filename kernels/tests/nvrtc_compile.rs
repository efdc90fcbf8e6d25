//! Compiles every `kernels/cuda/*.cu` with NVRTC for every architecture qtool targets. Needs only
//! libnvrtc and the CUDA headers (CI installs the `nvidia-cuda-nvrtc` wheels), never a GPU; where
//! NVRTC is missing it prints `skipped: <reason>` — unless `QTOOL_REQUIRE_NVRTC=1` or
//! `QTOOL_REQUIRE_GPU=1`, where that is a failure.

use qtool_kernels::{compile_for_arch, nvrtc, KernelError, KernelSource};

fn sources() -> Vec<KernelSource> {
    // QTOOL_NVRTC_ONLY=fp8,int4 limits the sweep to those files (quick local checks).
    let only = std::env::var("QTOOL_NVRTC_ONLY").ok();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("kernels/cuda exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .filter(|p| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| p.file_stem().is_some_and(|s| s == n.trim())))
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| KernelSource {
            name: Box::leak(p.file_stem().unwrap().to_string_lossy().into_owned().into_boxed_str()),
            code: Box::leak(std::fs::read_to_string(&p).expect("readable .cu").into_boxed_str()),
        })
        .collect()
}

fn required() -> bool {
    ["QTOOL_REQUIRE_NVRTC", "QTOOL_REQUIRE_GPU"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

#[test]
fn every_kernel_compiles_for_every_arch() {
    let archs = match nvrtc::supported_archs() {
        Ok(a) => a,
        Err(KernelError::NoGpu(reason)) if !required() => {
            println!("skipped: {reason}");
            return;
        }
        Err(e) => panic!("NVRTC unusable: {e}"),
    };
    let mut targets = vec!["sm_80", "sm_86", "sm_89", "sm_90a"];
    if archs.contains(&100) {
        targets.push("sm_100a");
    }
    // QTOOL_NVRTC_ARCHS=sm_90a (comma-separated) narrows the sweep for quick local checks.
    let narrowed = std::env::var("QTOOL_NVRTC_ARCHS").ok();
    if let Some(list) = narrowed.as_deref() {
        targets = list.split(',').map(str::trim).filter(|a| !a.is_empty()).collect();
    }
    let srcs = sources();
    assert!(!srcs.is_empty(), "no kernel sources in kernels/cuda");
    // One thread per source: NVRTC programs are independent, and CI has several cores.
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> =
            srcs.iter()
                .map(|src| {
                    let targets = &targets;
                    s.spawn(move || {
                        let mut errs = Vec::new();
                        for arch in targets {
                            match compile_for_arch(src, arch) {
                                Ok(cubin) if cubin.starts_with(b"\x7fELF") => {}
                                Ok(_) => errs
                                    .push(format!("{}.cu for {arch}: not an ELF cubin", src.name)),
                                Err(KernelError::NoGpu(reason)) => {
                                    return Err(format!("skip:{reason}"))
                                }
                                Err(e) => errs.push(format!("{}.cu for {arch}: {e}", src.name)),
                            }
                        }
                        if errs.is_empty() {
                            Ok(())
                        } else {
                            Err(errs.join("\n\n"))
                        }
                    })
                })
                .collect();
        handles.into_iter().map(|h| h.join().expect("compile thread")).collect()
    });
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(()) => {}
            Err(msg) if msg.starts_with("skip:") && !required() => {
                println!("skipped: {}", &msg[5..]);
                return;
            }
            Err(msg) => failures.push(msg),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    println!(
        "compiled {} sources for {targets:?} (NVRTC {:?})",
        srcs.len(),
        nvrtc::nvrtc_version().unwrap()
    );
}

#[test]
fn a_broken_kernel_reports_nvrtc_log() {
    if nvrtc::nvrtc_version().is_err() && !required() {
        println!("skipped: NVRTC not available");
        return;
    }
    let bad = KernelSource {
        name: "broken",
        code: "extern \"C\" __global__ void f() { undefined_symbol(); }",
    };
    match compile_for_arch(&bad, "sm_80") {
        Err(KernelError::Nvrtc { kernel, log }) => {
            assert_eq!(kernel, "broken");
            assert!(log.contains("undefined_symbol"), "log: {log}");
        }
        Err(KernelError::NoGpu(reason)) if !required() => println!("skipped: {reason}"),
        other => panic!("expected an NVRTC error, got {other:?}"),
    }
}
