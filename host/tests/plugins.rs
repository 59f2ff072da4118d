//! The plugin loader against real .so files: resolution, every loading error, and several
//! plugins of one kind side by side.

mod common;

use common::*;
use quictun::plugins::{LoadError, TokenParser, TokenSource};
use quictun_plugin_api::FailureKind;

#[tokio::test]
async fn built_in_names_are_case_insensitive() {
    for name in ["Fixed", "fixed", "FIXED"] {
        let source = TokenSource::load(name, "tcp:127.0.0.1:22", Some(plugin_dir())).unwrap();
        assert_eq!(source.info().name, "Fixed");
        assert_eq!(
            source.token("127.0.0.1:5000").await.unwrap(),
            b"tcp:127.0.0.1:22"
        );
    }
}

#[tokio::test]
async fn a_path_loads_the_file_it_names() {
    let path = plugin_path("cleartext");
    let parser = TokenParser::load(path.to_str().unwrap(), "", None).unwrap();
    assert_eq!(parser.info().path, std::fs::canonicalize(&path).unwrap());
    assert_eq!(
        parser.target(b"unix:/run/x.sock".to_vec()).await.unwrap(),
        "unix:/run/x.sock"
    );
    let refused = parser.target(vec![0xff]).await.unwrap_err();
    assert_eq!(refused.kind, FailureKind::Refused);
}

#[test]
fn a_missing_built_in_lists_the_places_searched() {
    let dir = TempDir::new("notfound");
    let error = TokenSource::load("Nope", "", Some(&dir.0)).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, LoadError::NotFound { .. }), "{text}");
    assert!(text.contains("libquictun_plugin_nope.so"), "{text}");
    assert!(text.contains(&dir.0.display().to_string()), "{text}");
    assert!(text.contains("lib/quictun/plugins"), "{text}");
}

#[test]
fn a_missing_path_names_the_path() {
    let error = TokenSource::load("./no/such/libx.so", "", None).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot load ./no/such/libx.so: No such file or directory (os error 2)"
    );
}

#[test]
fn a_file_that_is_not_a_library_is_refused() {
    let dir = TempDir::new("garbage");
    let path = dir.join("libgarbage.so");
    std::fs::write(&path, b"this is not an ELF file").unwrap();
    let error = TokenSource::load(path.to_str().unwrap(), "", None).unwrap_err();
    assert!(matches!(error, LoadError::Open { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot load {}", path.display())),
        "{error}"
    );
}

#[test]
fn a_library_without_our_module_is_not_a_quictun_plugin() {
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("a system libm to load");
    let error = TokenSource::load(libm, "", None).unwrap_err();
    assert!(matches!(error, LoadError::NotAPlugin { .. }), "{error}");
    assert!(
        error.to_string().ends_with(": not a quictun plugin"),
        "{error}"
    );
}

#[test]
fn a_plugin_of_another_kind_is_refused_with_both_kinds_named() {
    let error = TokenSource::load("Cleartext", "", Some(plugin_dir())).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("it is a token parser plugin, not a token source"),
        "{error}"
    );
    let error = TokenParser::load("Fixed", "x", Some(plugin_dir())).unwrap_err();
    assert!(
        error
            .to_string()
            .ends_with("it is a token source plugin, not a token parser"),
        "{error}"
    );
}

#[test]
fn a_bad_configuration_is_a_start_up_error_naming_the_plugin() {
    let error = TokenParser::load("Cleartext", "aes", Some(plugin_dir())).unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("plugin Cleartext ("), "{text}");
    assert!(
        text.contains("unknown --token-parser-key \"aes\""),
        "{text}"
    );
    let error = TokenSource::load("Fixed", "", Some(plugin_dir())).unwrap_err();
    assert!(
        error.to_string().contains("Fixed needs the token"),
        "{error}"
    );
}

#[tokio::test]
async fn two_copies_of_one_plugin_load_side_by_side() {
    // Two files of the same kind: each must be its own library, not a cached first one.
    let dir = TempDir::new("two");
    let copy = dir.join("libcopy_of_fixed.so");
    std::fs::copy(plugin_path("fixed"), &copy).unwrap();
    let first = TokenSource::load("Fixed", "tcp:127.0.0.1:1", Some(plugin_dir())).unwrap();
    let second = TokenSource::load(copy.to_str().unwrap(), "tcp:127.0.0.1:2", None).unwrap();
    assert_ne!(first.info().path, second.info().path);
    assert_eq!(first.token("a").await.unwrap(), b"tcp:127.0.0.1:1");
    assert_eq!(second.token("a").await.unwrap(), b"tcp:127.0.0.1:2");
}

#[test]
#[ignore = "needs the future-ABI fixture, built by scripts/test.sh"]
fn a_plugin_built_for_another_abi_version_names_both_versions() {
    let path = future_abi_plugin();
    let error = TokenSource::load(path.to_str().unwrap(), "", None).unwrap_err();
    assert!(matches!(error, LoadError::Version { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("built for plugin ABI 0.2.0"), "{text}");
    assert!(text.contains("this quictun has 0.1.0"), "{text}");
}

fn test_parser() -> TokenParser {
    let path = plugin_dir().join("libquictun_test_parser.so");
    TokenParser::load(path.to_str().unwrap(), "", None).unwrap()
}

#[tokio::test]
async fn a_panic_inside_a_plugin_becomes_an_error_and_the_plugin_goes_on() {
    let parser = test_parser();
    let error = parser.target(b"panic".to_vec()).await.unwrap_err();
    assert_eq!(error.kind, FailureKind::Panicked);
    assert_eq!(error.message.as_str(), "plugin panicked: asked to panic");
    assert_eq!(
        parser.target(b"tcp:127.0.0.1:1".to_vec()).await.unwrap(),
        "tcp:127.0.0.1:1"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_blocking_plugin_call_does_not_stall_the_runtime() {
    // One runtime thread: if the plugin blocked it, the timer below could not fire before
    // the plugin returned.
    let parser = test_parser();
    let call =
        tokio::spawn(async move { parser.target(b"sleep:1500,tcp:127.0.0.1:9".to_vec()).await });
    let started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert!(!call.is_finished());
    assert_eq!(call.await.unwrap().unwrap(), "tcp:127.0.0.1:9");
}

#[tokio::test]
async fn two_discriminators_and_two_token_sources_of_different_files_work_together() {
    use quictun::plugins::Discriminator;
    use quictun_plugin_api::{Direction, Verdict};
    let dir = TempDir::new("side-by-side");
    let copy = dir.join("libanother_spice.so");
    std::fs::copy(plugin_dir().join("libquictun_plugin_spice.so"), &copy).unwrap();
    let first = Discriminator::load("Spice", Some(plugin_dir())).unwrap();
    let second = Discriminator::load(copy.to_str().unwrap(), None).unwrap();
    for discriminator in [&first, &second] {
        let mut session = discriminator.session().unwrap();
        let verdict = session.feed(Direction::ClientToServer, b"REDQ".as_slice().into());
        assert_eq!(verdict.into_result().unwrap(), Verdict::AffirmedIncomplete);
        let mut other = discriminator.session().unwrap();
        let verdict = other.feed(
            Direction::ClientToServer,
            b"GET / HTTP/1.1".as_slice().into(),
        );
        assert_eq!(verdict.into_result().unwrap(), Verdict::Denied);
    }
    let table = dir.join("tokens");
    std::fs::write(&table, "127.0.0.1 tcp:127.0.0.1:7\n").unwrap();
    let file = TokenSource::load("File", table.to_str().unwrap(), Some(plugin_dir())).unwrap();
    let fixed = TokenSource::load("Fixed", "tcp:127.0.0.1:8", Some(plugin_dir())).unwrap();
    assert_eq!(
        file.token("127.0.0.1:1000").await.unwrap(),
        b"tcp:127.0.0.1:7"
    );
    assert_eq!(
        fixed.token("127.0.0.1:1000").await.unwrap(),
        b"tcp:127.0.0.1:8"
    );
    assert_eq!(
        file.token("10.0.0.1:1000").await.unwrap_err().kind,
        FailureKind::Refused
    );
}

#[tokio::test]
async fn the_third_party_example_loads_by_path() {
    let path = plugin_dir().join("libround_robin_source.so");
    let source = TokenSource::load(
        path.to_str().unwrap(),
        "tcp:127.0.0.1:1, tcp:127.0.0.1:2",
        None,
    )
    .unwrap();
    assert_eq!(source.info().name, "RoundRobin");
    let turns: Vec<Vec<u8>> = [
        source.token("a").await.unwrap(),
        source.token("b").await.unwrap(),
        source.token("c").await.unwrap(),
    ]
    .into();
    assert_eq!(
        turns,
        [
            b"tcp:127.0.0.1:1".to_vec(),
            b"tcp:127.0.0.1:2".to_vec(),
            b"tcp:127.0.0.1:1".to_vec()
        ]
    );
}
