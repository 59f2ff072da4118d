//! The recorded SPICE connections of `plugins/spice/tests/captures/` and a player that replays
//! one side of them in the recorded order, checking every byte the other side sends.

use std::path::PathBuf;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One recorded connection.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub name: String,
    pub c2s: Vec<u8>,
    pub s2c: Vec<u8>,
    /// The `protocolProperties` an endpoint must report.
    pub properties: Value,
    /// The order the bytes flowed in: (client to server?, byte count).
    pub script: Vec<(bool, usize)>,
}

fn captures() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/spice/tests/captures"
    ));
    assert!(
        dir.join("expected.json").is_file(),
        "SPICE captures missing at {}",
        dir.display()
    );
    dir
}

pub fn fixtures() -> Vec<Fixture> {
    let dir = captures();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let read = |f: &Value, key: &str| std::fs::read(dir.join(f[key].as_str().unwrap())).unwrap();
    expected["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Fixture {
            name: f["name"].as_str().unwrap().to_owned(),
            c2s: read(f, "c2s"),
            s2c: read(f, "s2c"),
            properties: f["protocolProperties"].clone(),
            script: f["script"]
                .as_array()
                .unwrap()
                .iter()
                .map(|step| (step[0] == "c2s", step[1].as_u64().unwrap() as usize))
                .collect(),
        })
        .collect()
}

/// Plays one side of a recording: writes this side's steps and reads the other side's,
/// checking every byte read. Returns the stream, still open.
pub async fn play<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    fixture: &Fixture,
    client: bool,
) -> S {
    let (mine, theirs) = if client {
        (&fixture.c2s, &fixture.s2c)
    } else {
        (&fixture.s2c, &fixture.c2s)
    };
    let (mut wrote, mut read) = (0, 0);
    for &(c2s, len) in &fixture.script {
        if c2s == client {
            stream.write_all(&mine[wrote..wrote + len]).await.unwrap();
            wrote += len;
        } else {
            let mut buf = vec![0; len];
            stream.read_exact(&mut buf).await.unwrap();
            assert!(
                buf == theirs[read..read + len],
                "{}: bytes changed in the tunnel",
                fixture.name
            );
            read += len;
        }
    }
    stream
}
