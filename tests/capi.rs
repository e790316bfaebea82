//! The C ABI from C: builds `tests/c/api_test.c` with the system C compiler against
//! `include/xdan.h` and the `libxdan.so` of this build profile, then runs it on the fixtures,
//! natively and under valgrind (no leaks, no invalid accesses). Also checks that the C test
//! calls every function the header declares, and that the header compiles as C++.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>/`: the test executable lives in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(|d| d.parent()).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// The shared library of this build. Cargo compiles the library with all its crate types for the
/// tests, into `deps/` (it copies it up to `target/<profile>/` only on `cargo build`), so the
/// fresh one is `deps/libxdan.so`; failing that, a `cargo build --lib` of this profile.
fn shared_lib() -> PathBuf {
    let dir = profile_dir();
    let fresh = dir.join("deps/libxdan.so");
    if fresh.exists() {
        return fresh;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args(["build", "--lib"]);
    if dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        cmd.arg("--release");
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "cargo build --lib failed");
    let lib = dir.join("libxdan.so");
    assert!(lib.exists(), "{} not found after the build", lib.display());
    lib
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn tmp_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("capi-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("create tmp dir");
    d
}

/// A folder holding only this build's library, under the names a program may ask for:
/// `libxdan.so` (to link) and `libxdan.so.<ABI>` (the soname, if the build sets one).
fn lib_dir() -> PathBuf {
    let lib = shared_lib();
    let dir = tmp_dir().join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["libxdan.so".to_string(), format!("libxdan.so.{}", xdan::capi::XDAN_ABI_VERSION)] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link).expect("symlink the library");
    }
    dir
}

/// Compiles the C test once per test binary run.
fn api_test_exe() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let lib_dir = lib_dir();
        let exe = tmp_dir().join("api_test");
        let out = Command::new(cc())
            .args(["-std=c11", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-pthread"])
            .arg("-I")
            .arg(root().join("include"))
            .arg(root().join("tests/c/api_test.c"))
            .arg("-o")
            .arg(&exe)
            .arg(format!("-L{}", lib_dir.display()))
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .arg("-lxdan")
            .output()
            .expect("run the C compiler (set CC to choose one)");
        assert!(
            out.status.success(),
            "compiling tests/c/api_test.c failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    })
}

fn json(path: &str) -> serde_json::Value {
    let p = root().join(path);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ids(v: &serde_json::Value) -> String {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_i64().expect("id").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The C test's command line: models, scratch dir, llama.cpp's prompt p1 and greedy ids for
/// tiny-mixtral Q8_0, one SPM tokenizer case.
fn api_test_command(prefix: &[&str]) -> Command {
    let refs = json("tests/data/tiny-mixtral/Q8_0/refs.json");
    let p1 = refs["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p1")
        .expect("prompt p1");
    assert_eq!(refs["greedy"]["prompt"], "p1");
    let spm = json("tests/data/tokenizer/llama-spm.json");
    let case = spm["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == "The quick brown fox jumps over the lazy dog.")
        .expect("SPM case");
    let mode = &case["add_special"];

    let data = root().join("tests/data");
    let exe = api_test_exe();
    let mut cmd = if prefix.is_empty() {
        Command::new(exe)
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(exe);
        c
    };
    let tmp = tmp_dir().join(format!("run-{}", prefix.len()));
    std::fs::create_dir_all(&tmp).unwrap();
    cmd.arg(data.join("tiny-mixtral/Q8_0/tiny-mixtral-Q8_0.gguf"))
        .arg(data.join("tokenizer/vocabs/ggml-vocab-llama-spm.gguf"))
        .arg(data.join("tokenizer/vocabs/ggml-vocab-qwen2.gguf"))
        .arg(&tmp)
        .arg(ids(&p1["ids"]))
        .arg(ids(&refs["greedy"]["ids"]))
        .arg(case["text"].as_str().unwrap())
        .arg(ids(&mode["ids"]))
        .arg(mode["detokenize"].as_str().unwrap())
        .arg(mode["detokenize_nospecial"].as_str().unwrap())
        .env("XDAN_TEST_OTHER_MODEL", data.join("tiny-mixtral/F16/tiny-mixtral-F16.gguf"));
    cmd
}

fn run(mut cmd: Command, what: &str) {
    // cargo test puts target/<profile>/ first on the library path, where a stale libxdan.so
    // from an earlier `cargo build` may lie; the executable's rpath names the fresh one.
    cmd.env_remove("LD_LIBRARY_PATH");
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{what} failed ({}); its output is above", out.status);
}

#[test]
fn c_api_test_passes() {
    run(api_test_command(&[]), "tests/c/api_test.c");
}

#[test]
fn c_api_test_is_clean_under_valgrind() {
    let have = Command::new("valgrind").arg("--version").output().map(|o| o.status.success());
    assert!(
        matches!(have, Ok(true)),
        "valgrind is required for this test (apt-get install -y valgrind)"
    );
    run(
        api_test_command(&[
            "valgrind",
            "--leak-check=full",
            "--error-exitcode=1",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ]),
        "tests/c/api_test.c under valgrind",
    );
}

/// Every function the header declares is called by the C test.
#[test]
fn c_api_test_covers_every_function() {
    let header = std::fs::read_to_string(root().join("include/xdan.h")).unwrap();
    let test = std::fs::read_to_string(root().join("tests/c/api_test.c")).unwrap();
    let mut functions = Vec::new();
    for line in header.lines() {
        let t = line.trim_start();
        if t.starts_with('*') || t.starts_with("/*") || t.starts_with("typedef") || t.starts_with('#') {
            continue;
        }
        // Declarations look like `<type> xdan_name(` ; function-pointer typedefs were skipped.
        if let Some(open) = t.find('(') {
            let name = t[..open].rsplit([' ', '*']).next().unwrap();
            if name.starts_with("xdan_") {
                functions.push(name.to_string());
            }
        }
    }
    assert!(functions.len() >= 35, "found only {} functions in the header", functions.len());
    let missing: Vec<_> =
        functions.iter().filter(|f| !test.contains(&format!("{f}("))).cloned().collect();
    assert!(missing.is_empty(), "tests/c/api_test.c never calls: {missing:?}");
}

/// The header is also valid C++ (its functions inside `extern "C"`).
#[test]
fn header_compiles_as_cpp() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let src = tmp_dir().join("header_check.cpp");
    std::fs::write(
        &src,
        "#include \"xdan.h\"\nint main() { return xdan_abi_version() == XDAN_ABI_VERSION ? 0 : 1; }\n",
    )
    .unwrap();
    let out = Command::new(&cxx)
        .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", "-I"])
        .arg(root().join("include"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("run {cxx}: {e}"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
