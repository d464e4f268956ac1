use clap::Parser;
use t2i_align::cli::{self, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Openapi => {
            print!(
                "{}",
                t2i_align::http::openapi::spec_json(t2i_align::http::openapi::Security::Keys)
            );
            Ok(())
        }
        Command::Generate(args) => cli::run_generate(args).map(|_| ()),
        Command::Score(args) => cli::run_score(args).map(|_| ()),
        Command::FineTune(command) => cli::fine_tune::run(command),
        Command::Keys(command) => cli::keys::run(command),
        Command::Serve(args) => args
            .into_config()
            .and_then(|config| actix_web::rt::System::new().block_on(cli::serve::serve(config))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
