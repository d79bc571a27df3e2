//! `shop serve` | `shop worker`: see `shop --help`.

use std::process::ExitCode;

use shop::app::{self, ServeConfig, DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL};
use shop::worker::WorkerConfig;
use shop::Keys;

const USAGE: &str = "\
shop: an example service on diesel-on-commit (PostgreSQL + Redis)

USAGE:
    shop serve  [OPTIONS] [--bind ADDR] [--pool-size N]
    shop worker [OPTIONS] [--mail-dir DIR]

OPTIONS:
    --database-url URL   PostgreSQL (default: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/test)
    --redis-url URL      Redis (default: $REDIS_URL, else redis://127.0.0.1:6379)
    --redis-prefix P     prefix of every Redis key (default: none)
    --bind ADDR          serve: where to listen (default: 127.0.0.1:3000; port 0 picks a free one)
    --pool-size N        serve: database connections (default: 10)
    --mail-dir DIR       worker: where e-mails are written as .eml files (default: ./mail)

`serve` runs the pending migrations, then prints `listening on http://ADDR`.
Logs go to stderr; RUST_LOG=debug|info|warn|error sets the level (default: info).";

struct Args {
    command: String,
    database_url: String,
    redis_url: String,
    keys: Keys,
    bind: std::net::SocketAddr,
    pool_size: usize,
    mail_dir: std::path::PathBuf,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let command = argv.next().ok_or("no command given")?;
    if command == "-h" || command == "--help" || command == "help" {
        return Err(String::new());
    }
    if command != "serve" && command != "worker" {
        return Err(format!("unknown command {command:?}"));
    }
    let mut args = Args {
        command,
        database_url: std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into()),
        redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into()),
        keys: Keys::default(),
        bind: "127.0.0.1:3000".parse().expect("a valid address"),
        pool_size: 10,
        mail_dir: app::default_mail_dir(),
    };
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
            None => (flag.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "--database-url" => args.database_url = value()?,
            "--redis-url" => args.redis_url = value()?,
            "--redis-prefix" => args.keys = Keys::new(value()?),
            "--bind" => {
                let v = value()?;
                args.bind = v.parse().map_err(|e| format!("--bind {v:?}: {e}"))?;
            }
            "--pool-size" => {
                let v = value()?;
                args.pool_size = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--pool-size {v:?}: not a positive number"))?;
            }
            "--mail-dir" => args.mail_dir = value()?.into(),
            _ => return Err(format!("unknown option {flag:?}")),
        }
    }
    Ok(args)
}

fn init_logs() {
    let level = match std::env::var("RUST_LOG")
        .unwrap_or_default()
        .to_lowercase()
        .as_str()
    {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "warn" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours for a terminal only: piped or redirected, the log stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(level)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    init_logs();
    let result = if args.command == "serve" {
        let runtime = match tokio::runtime::Runtime::new() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("error: cannot start the tokio runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(app::serve(ServeConfig {
            database_url: args.database_url,
            redis_url: args.redis_url,
            keys: args.keys,
            bind: args.bind,
            pool_size: args.pool_size,
        }))
    } else {
        app::worker(WorkerConfig {
            database_url: args.database_url,
            redis_url: args.redis_url,
            keys: args.keys,
            mail_dir: args.mail_dir,
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
