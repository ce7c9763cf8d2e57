//! Command-line errors printed the way the rest of the output is: one JSON line when
//! JSON logs were asked for, else clap's text, naming the environment variable a bad
//! value came from.

use super::Cli;

/// Print a command-line error the way the rest of the output is printed: as one JSON
/// line when JSON logs were asked for (scripts parse stderr), else clap's text. A bad value
/// that came from an environment variable names the variable, not only the flag.
pub fn print_usage_error(e: &clap::Error) {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) || e.exit_code() == 0 {
        let _ = e.print();
        return;
    }
    let mut text = e.render().to_string();
    if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        if let Some(var) = env_source(arg) {
            text = text.replacen(
                &format!("'{arg}'"),
                &format!("'{arg}' (from the environment variable {var})"),
                1,
            );
        }
    }
    let json = {
        let args: Vec<String> = std::env::args().collect();
        args.windows(2).any(|w| w[0] == "--log-format" && w[1] == "json")
            || args.iter().any(|a| a == "--log-format=json")
            || std::env::var("NIX_SEED_LOG_FORMAT").is_ok_and(|v| v == "json")
    };
    if json {
        let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
        eprintln!(
            "{}",
            serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": "error",
                "event": "usage",
                "msg": first,
                "exit_code": e.exit_code(),
            })
        );
    } else {
        eprint!("{text}");
    }
}

/// The environment variable an argument's bad value came from: `arg` (clap's rendering,
/// e.g. `--lock-stale <DUR>`) has a variable that is set, and the flag is not on the
/// command line.
fn env_source(arg: &str) -> Option<String> {
    use clap::CommandFactory;
    let long = arg.split_whitespace().next()?.strip_prefix("--")?;
    let on_line = std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if on_line {
        return None;
    }
    let cmd = Cli::command();
    let var = cmd
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .filter(|a| a.get_long() == Some(long))
        .find_map(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned());
    var.filter(|v| std::env::var_os(v).is_some())
}
