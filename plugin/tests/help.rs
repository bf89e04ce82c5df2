//! Snapshots of `--help` for the root command and every subcommand, found by walking the
//! parser: the help text is the plugin's first documentation, so any change to it shows up in
//! review, and a new subcommand gets its snapshot without touching this file.

use clap::CommandFactory;
use kubectl_s2z::Cli;

fn built() -> clap::Command {
    let mut command = Cli::command().term_width(100);
    command.build();
    command
}

/// Every command path below the root: `status`, `settings`, `settings set`, ...
fn paths(command: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in command.get_subcommands() {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        out.push(path.clone());
        paths(sub, &path, out);
    }
}

fn find<'a>(command: &'a mut clap::Command, path: &[String]) -> &'a mut clap::Command {
    path.iter().fold(command, |current, name| {
        match current.find_subcommand_mut(name) {
            Some(sub) => sub,
            None => panic!("no subcommand {name}"),
        }
    })
}

#[test]
fn root() {
    insta::assert_snapshot!("root", built().render_long_help().to_string());
    insta::assert_snapshot!("root_short", built().render_help().to_string());
}

#[test]
fn every_subcommand() {
    let command = built();
    let mut all = Vec::new();
    paths(&command, &[], &mut all);
    assert!(all.len() >= 10, "{all:?}");
    for path in all {
        let mut command = built();
        let help = find(&mut command, &path).render_long_help().to_string();
        insta::assert_snapshot!(format!("sub_{}", path.join("_")), help);
    }
}
