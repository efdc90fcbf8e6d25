//! `qtool gpu-info`: what the GPU probe found. Informational, so it exits 0 whether or not a GPU
//! is there; `usable` (JSON) or the last line (text) says whether kernels can run.

use std::process::ExitCode;

use qtool_kernels::probe::{probe, GpuProbe};
use serde::Serialize;

use crate::output::{human_bytes, Output};

#[derive(Serialize)]
struct Report<'a> {
    schema_version: u32,
    usable: bool,
    #[serde(flatten)]
    probe: &'a GpuProbe,
}

pub fn run(out: &Output) -> anyhow::Result<ExitCode> {
    let p = probe();
    if out.json {
        out.print_json(&Report { schema_version: 1, usable: p.is_usable(), probe: &p })?;
    } else {
        out.print(&render(&p))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn render(p: &GpuProbe) -> String {
    let found = |lib: &Option<String>, version: &Option<String>| match (lib, version) {
        (Some(lib), Some(v)) => format!("{v} ({lib})"),
        (Some(lib), None) => format!("loaded {lib}, version unknown"),
        (None, _) => "not found".to_string(),
    };
    let mut s = String::new();
    s.push_str(&format!("CUDA driver: {}\n", found(&p.driver_library, &p.driver_version)));
    s.push_str(&format!("NVRTC:       {}\n", found(&p.nvrtc_library, &p.nvrtc_version)));
    if p.devices.is_empty() {
        s.push_str("GPUs:        none\n");
    }
    for d in &p.devices {
        s.push_str(&format!(
            "GPU {}:       {} (compute capability {}.{}, {})\n",
            d.ordinal,
            d.name,
            d.compute_capability.0,
            d.compute_capability.1,
            human_bytes(d.total_memory_bytes)
        ));
    }
    match p.unusable_reason() {
        None => s.push_str("usable: yes\n"),
        Some(reason) => s.push_str(&format!("usable: no: {reason}\n")),
    }
    s
}
