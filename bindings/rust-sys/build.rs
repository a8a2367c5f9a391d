//! Finds libpsrpc for the psrpc-sys crate.
//!
//! 1. Unless the `vendored` feature is on or `PSRPC_SYS_VENDORED=1`, asks
//!    pkg-config for `psrpc` at least this crate's version (an installed
//!    libpsrpc, or a build tree's `psrpc-uninstalled.pc` on PKG_CONFIG_PATH).
//! 2. Otherwise (or when pkg-config finds nothing, unless
//!    `PSRPC_SYS_VENDORED=0`) builds the C sources with CMake (the `cmake`
//!    crate) and links the static library, plus its dependencies found through
//!    pkg-config (libuv, libprotobuf-c, zlib, OpenSSL, hiredis, libnats).
//!
//! The C sources are the crate's `csrc/` (made by `vendor-csrc.sh` for
//! `cargo package`) or, in the repository, the repository root
//! (`PSRPC_SYS_SOURCE_DIR` overrides both). Extra CMake definitions come from
//! `PSRPC_SYS_CMAKE_ARGS` (space-separated `NAME=VALUE`, e.g.
//! `PSRPC_SANITIZE=address`).
//!
//! Exposes to dependents `DEP_PSRPC_INCLUDE` (the directory holding psrpc.h)
//! and to this crate's tests `PSRPC_SYS_HEADER_DIR`.
use std::env;
use std::path::{Path, PathBuf};

fn main() {
    for var in ["PSRPC_SYS_VENDORED", "PSRPC_SYS_SOURCE_DIR", "PSRPC_SYS_CMAKE_ARGS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let source = source_dir(&manifest);
    let vendored_env = env::var("PSRPC_SYS_VENDORED").ok();
    let force_vendored = env::var_os("CARGO_FEATURE_VENDORED").is_some() || vendored_env.as_deref() == Some("1");
    let never_vendored = vendored_env.as_deref() == Some("0");

    if !force_vendored {
        let version = env::var("CARGO_PKG_VERSION").unwrap();
        match pkg_config::Config::new().atleast_version(&version).probe("psrpc") {
            Ok(lib) => {
                let include = lib
                    .include_paths
                    .iter()
                    .find(|p| p.join("psrpc.h").exists())
                    .cloned()
                    .or_else(|| source.as_ref().map(|s| s.join("capi")))
                    .expect("pkg-config found psrpc but not psrpc.h");
                export_include(&include);
                return;
            }
            Err(e) if never_vendored => panic!("PSRPC_SYS_VENDORED=0 and pkg-config did not find psrpc >= {version}: {e}"),
            Err(_) => println!("cargo:warning=pkg-config found no psrpc >= {version}: building the vendored C sources"),
        }
    }

    let source = source.unwrap_or_else(|| {
        panic!(
            "no C sources to build: neither {}/csrc nor the repository root (run vendor-csrc.sh, or set PSRPC_SYS_SOURCE_DIR)",
            manifest.display()
        )
    });
    for dir in ["CMakeLists.txt", "capi", "impl", "cmake", "pkgconfig"] {
        println!("cargo:rerun-if-changed={}", source.join(dir).display());
    }
    let mut cfg = cmake::Config::new(&source);
    cfg.define("PSRPC_BUILD_TESTS", "OFF")
        .define("PSRPC_BUILD_EXAMPLES", "OFF")
        .define("CMAKE_BUILD_TYPE", "RelWithDebInfo")
        .build_target("psrpc_static");
    let mut sanitize = String::new();
    if let Ok(args) = env::var("PSRPC_SYS_CMAKE_ARGS") {
        for arg in args.split_whitespace() {
            let (k, v) = arg.split_once('=').unwrap_or((arg, "ON"));
            if k == "PSRPC_SANITIZE" {
                sanitize = v.to_string();
            }
            cfg.define(k, v);
        }
    }
    let dst = cfg.build();
    println!("cargo:rustc-link-search=native={}", dst.join("build").display());
    println!("cargo:rustc-link-lib=static=psrpc");
    for dep in ["libuv", "libprotobuf-c", "zlib", "libssl", "libcrypto", "hiredis", "libnats"] {
        if let Err(e) = pkg_config::Config::new().statik(false).probe(dep) {
            panic!("libpsrpc needs {dep} (Debian: see scripts/setup-deps.sh): {e}");
        }
    }
    println!("cargo:rustc-link-lib=pthread");
    if !sanitize.is_empty() {
        println!("cargo:warning=libpsrpc built with PSRPC_SANITIZE={sanitize}: link with -Zsanitizer or RUSTFLAGS=-Clink-arg=-fsanitize=...");
    }
    export_include(&source.join("capi"));
}

fn source_dir(manifest: &Path) -> Option<PathBuf> {
    if let Some(dir) = env::var_os("PSRPC_SYS_SOURCE_DIR") {
        return Some(PathBuf::from(dir));
    }
    [manifest.join("csrc"), manifest.join("../..")]
        .into_iter()
        .find(|d| d.join("capi/psrpc.h").exists() && d.join("CMakeLists.txt").exists())
        .map(|d| d.canonicalize().unwrap_or(d))
}

fn export_include(dir: &Path) {
    println!("cargo:include={}", dir.display());
    println!("cargo:rustc-env=PSRPC_SYS_HEADER_DIR={}", dir.display());
}
