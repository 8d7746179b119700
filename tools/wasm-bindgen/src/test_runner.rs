//! `wasm-bindgen-test-runner`, the runner `cargo test --target wasm32-unknown-unknown` starts
//! (.cargo/config.toml), as the CLI of the same version would run it.
fn main() {
    env_logger::init();
    if let Err(e) =
        wasm_bindgen_cli::wasm_bindgen_test_runner::run_cli_with_args(std::env::args_os())
    {
        eprintln!("error: {e:?}");
        std::process::exit(1);
    }
}
