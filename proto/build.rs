//! Compiles every `.proto` file under `casework/` with protox (pure Rust, so
//! the build needs no system `protoc`) and generates prost messages and tonic
//! services into `OUT_DIR`, plus a file descriptor set for gRPC reflection.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    collect(&root.join("casework"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=casework");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("casework_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps make encoding deterministic: the same event always
        // encodes to the same bytes (and so the same hash).
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
