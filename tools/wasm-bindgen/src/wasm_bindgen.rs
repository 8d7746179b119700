//! `wasm-bindgen`: the generator of wasm-bindgen's CLI (wasm-bindgen-cli-support, the same
//! version), with the CLI's defaults and only the flags build.sh uses:
//! `wasm-bindgen --target web --out-dir DIR [--out-name NAME] [--no-typescript] INPUT.wasm`.
use std::path::PathBuf;

use anyhow::{bail, Context};

const USAGE: &str =
    "usage: wasm-bindgen --target web --out-dir DIR [--out-name NAME] [--no-typescript] INPUT.wasm";

struct Args {
    input: PathBuf,
    out_dir: PathBuf,
    out_name: Option<String>,
    typescript: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
    let (mut input, mut out_dir, mut out_name, mut target) = (None, None, None, None);
    let mut typescript = true;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().with_context(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "-V" | "--version" => return Ok(None),
            "--target" => target = Some(value("--target")?),
            "--out-dir" => out_dir = Some(PathBuf::from(value("--out-dir")?)),
            "--out-name" => out_name = Some(value("--out-name")?),
            "--no-typescript" => typescript = false,
            flag if flag.starts_with('-') => {
                bail!("{flag} is not supported by gitcap's wasm-bindgen (tools/wasm-bindgen)\n{USAGE}")
            }
            _ if input.is_none() => input = Some(PathBuf::from(arg)),
            _ => bail!("more than one input file\n{USAGE}"),
        }
    }
    if target.as_deref() != Some("web") {
        bail!("only --target web is supported\n{USAGE}");
    }
    Ok(Some(Args {
        input: input.with_context(|| format!("no input file\n{USAGE}"))?,
        out_dir: out_dir.with_context(|| format!("no --out-dir\n{USAGE}"))?,
        out_name,
        typescript,
    }))
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mut b = wasm_bindgen_cli_support::Bindgen::new();
    // The CLI's own calls when given no other flags (wasm-bindgen-cli's `rmain`), whose defaults
    // differ from Bindgen::new()'s (typescript, omit_default_module_path).
    b.web(true)?;
    #[allow(deprecated)]
    b.input_path(&args.input)
        .debug(false)
        .demangle(true)
        .keep_lld_exports(false)
        .keep_debug(false)
        .split_debug_info(false)
        .remove_name_section(false)
        .remove_producers_section(false)
        .typescript(args.typescript)
        .omit_imports(false)
        .omit_default_module_path(false)
        .split_linked_modules(false)
        .js_string_builtins(false)
        .ts_typed_array_buffers(false)
        .reference_types(false)
        .reset_state_function(false)
        .force_enable_abort_handler(false);
    if let Some(name) = &args.out_name {
        b.out_name(name);
    }
    b.generate(&args.out_dir)
}

fn main() {
    let result = parse(std::env::args().skip(1)).and_then(|args| match args {
        Some(args) => run(&args),
        None => {
            println!("wasm-bindgen {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:?}");
        std::process::exit(1);
    }
}
