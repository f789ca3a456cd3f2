fn main() -> std::process::ExitCode {
    epnix_deploy::cli::main()
}
