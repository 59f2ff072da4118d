//! Tests of the whole discriminator: real captures replayed in several cuttings, hand-built
//! links for every channel type, truncations, hostile and random input, and the FFI path.

use std::path::PathBuf;

use quictun_plugin_api::abi_stable::std_types::{RSlice, RStr};
use quictun_plugin_api::{
    __private::new_discriminator, Direction, Discriminator, DiscriminatorSession, HostLog, Verdict,
};
use serde_json::{Map, Value, json};

use crate::session::MAX_ITEM;
use crate::{Spice, SpiceSession, parse};

const C2S: Direction = Direction::ClientToServer;
const S2C: Direction = Direction::ServerToClient;

// ---- helpers: captures ----

/// One recorded connection from tests/captures/.
struct Fixture {
    name: String,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    expected: Value,
    script: Vec<(Direction, usize)>,
}

fn captures_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/captures"));
    assert!(
        dir.join("expected.json").is_file(),
        "SPICE captures missing: expected {}",
        dir.display()
    );
    dir
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn fixtures() -> Vec<Fixture> {
    let dir = captures_dir();
    let expected: Value =
        serde_json::from_slice(&read(&dir, "expected.json")).expect("expected.json is JSON");
    let list = expected["fixtures"].as_array().expect("fixtures is a list");
    assert!(!list.is_empty(), "expected.json lists no fixtures");
    list.iter().map(|f| fixture(&dir, f)).collect()
}

fn fixture(dir: &std::path::Path, f: &Value) -> Fixture {
    let text = |key: &str| f[key].as_str().unwrap_or_else(|| panic!("{key} missing"));
    assert_eq!(text("protocol"), "spice");
    let script = f["script"]
        .as_array()
        .expect("script is a list")
        .iter()
        .map(|step| {
            let direction = match step[0].as_str() {
                Some("c2s") => C2S,
                Some("s2c") => S2C,
                other => panic!("bad script direction {other:?}"),
            };
            let count = step[1].as_u64().expect("script count") as usize;
            (direction, count)
        })
        .collect();
    let fixture = Fixture {
        name: text("name").to_string(),
        c2s: read(dir, text("c2s")),
        s2c: read(dir, text("s2c")),
        expected: f["protocolProperties"].clone(),
        script,
    };
    fixture.check_script_covers_files();
    fixture
}

impl Fixture {
    fn bytes(&self, direction: Direction) -> &[u8] {
        match direction {
            Direction::ClientToServer => &self.c2s,
            Direction::ServerToClient => &self.s2c,
        }
    }

    fn check_script_covers_files(&self) {
        for direction in [C2S, S2C] {
            let total: usize = self
                .script
                .iter()
                .filter(|(d, _)| *d == direction)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(total, self.bytes(direction).len(), "{}: script", self.name);
        }
    }

    /// The bytes cut as they were recorded.
    fn script_chunks(&self) -> Vec<(Direction, &[u8])> {
        let mut offsets = [0usize; 2];
        let mut chunks = Vec::new();
        for &(direction, count) in &self.script {
            let bytes = self.bytes(direction);
            let offset = &mut offsets[direction as usize];
            let end = (*offset + count).min(bytes.len());
            chunks.push((direction, &bytes[*offset..end]));
            *offset = end;
        }
        chunks
    }

    /// The recorded order, one byte per chunk.
    fn byte_chunks(&self) -> Vec<(Direction, &[u8])> {
        self.script_chunks()
            .into_iter()
            .flat_map(|(d, chunk)| chunk.chunks(1).map(move |b| (d, b)))
            .collect()
    }

    /// All the client's bytes, then all the server's.
    fn direction_chunks(&self) -> Vec<(Direction, &[u8])> {
        vec![(C2S, &self.c2s[..]), (S2C, &self.s2c[..])]
    }
}

// ---- helpers: feeding and checking ----

/// Feeds chunks as the host does: in order, stopping at a final verdict.
fn replay<'a>(chunks: impl IntoIterator<Item = (Direction, &'a [u8])>) -> SpiceSession {
    let mut session = SpiceSession::new();
    for (direction, chunk) in chunks {
        if !session.feed(direction, chunk).wants_more() {
            break;
        }
    }
    session
}

/// The first `len` bytes of a chunk sequence, cut as the sequence is.
fn prefix<'a>(chunks: &[(Direction, &'a [u8])], len: usize) -> Vec<(Direction, &'a [u8])> {
    let mut left = len;
    let mut out = Vec::new();
    for &(direction, chunk) in chunks {
        if left == 0 {
            break;
        }
        let n = chunk.len().min(left);
        out.push((direction, &chunk[..n]));
        left -= n;
    }
    out
}

fn props(session: &SpiceSession) -> Value {
    match session.properties() {
        Some(text) => {
            let value: Value = serde_json::from_str(&text).expect("properties are JSON");
            assert!(value.is_object(), "properties are an object: {text}");
            value
        }
        None => Value::Object(Map::new()),
    }
}

fn assert_subset(part: &Value, whole: &Value, context: &str) {
    let part = part.as_object().expect("object");
    for (key, value) in part {
        assert_eq!(whole.get(key), Some(value), "{context}: {key} differs");
    }
}

/// Every prefix of `chunks`: no panic, never Denied, properties a subset of `expected`, and
/// AffirmedComplete only with all of them.
fn check_truncations(chunks: &[(Direction, &[u8])], expected: &Value, context: &str) {
    let total: usize = chunks.iter().map(|(_, c)| c.len()).sum();
    for len in 0..=total {
        let session = replay(prefix(chunks, len));
        let found = props(&session);
        let verdict = session.verdict();
        let context = format!("{context}, {len} bytes");
        assert_ne!(verdict, Verdict::Denied, "{context}");
        assert_subset(&found, expected, &context);
        if verdict == Verdict::AffirmedComplete {
            assert_eq!(&found, expected, "{context}");
        }
        assert!(session.buffered() <= 2 * MAX_ITEM, "{context}");
    }
}

fn host_log() -> HostLog {
    HostLog::discard("spice")
}

// ---- helpers: hand-built SPICE ----

const SESSION: [u8; 4] = [0xde, 0xad, 0xbe, 0xef];
const UUID: [u8; 16] = [
    0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x0f, 0xed, 0xcb, 0xa9, 0x87, 0x65, 0x43, 0x21,
];
/// Auth selection and mini header, as spice-gtk advertises them.
const CLIENT_COMMON: u32 = 0b1001;
/// NAME_AND_UUID among the main channel caps.
const MAIN_CAPS: u32 = 0b0010;

fn le(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn link_header(major: u32, minor: u32, size: usize) -> Vec<u8> {
    let mut out = parse::MAGIC.to_vec();
    out.extend(le(&[major, minor, size as u32]));
    out
}

/// SpiceLinkHeader + SpiceLinkMess with one common and one channel caps word.
fn client_link(id: [u8; 4], channel_type: u8, common: u32, channel: u32) -> Vec<u8> {
    let mut mess = id.to_vec();
    mess.extend([channel_type, 0]);
    mess.extend(le(&[1, 1, parse::LINK_MESS_LEN as u32, common, channel]));
    let mut out = link_header(2, 2, mess.len());
    out.extend(mess);
    out
}

/// A client link followed by the auth mechanism and a ticket, as a real client sends.
fn client_bytes(id: [u8; 4], channel_type: u8, common: u32, channel: u32) -> Vec<u8> {
    let mut out = client_link(id, channel_type, common, channel);
    out.extend(le(&[1]));
    out.extend([0x5a; 128]);
    out
}

/// SpiceLinkHeader + SpiceLinkReply (no error) + a successful link result.
fn server_link(common: u32, channel: u32) -> Vec<u8> {
    let mut reply = le(&[0]);
    reply.extend([0x30; parse::PUB_KEY_LEN]);
    reply.extend(le(&[1, 1, parse::LINK_REPLY_LEN as u32, common, channel]));
    let mut out = link_header(2, 2, reply.len());
    out.extend(reply);
    out.extend(le(&[0]));
    out
}

fn message(mini: bool, msg_type: u16, body: &[u8]) -> Vec<u8> {
    let mut out = if mini {
        Vec::new()
    } else {
        7u64.to_le_bytes().to_vec()
    };
    out.extend(msg_type.to_le_bytes());
    out.extend((body.len() as u32).to_le_bytes());
    if !mini {
        out.extend(le(&[0]));
    }
    out.extend(body);
    out
}

fn main_init(id: [u8; 4]) -> Vec<u8> {
    let mut body = id.to_vec();
    body.extend(le(&[1, 1, 2, 0, 10, 1234, 0]));
    body
}

fn main_name(name: &str) -> Vec<u8> {
    let mut body = le(&[name.len() as u32 + 1]);
    body.extend(name.as_bytes());
    body.push(0);
    body
}

/// Server messages of a main channel: a ping first, then INIT, NAME and UUID.
fn main_messages(mini: bool) -> Vec<u8> {
    let mut out = message(mini, 4, &[1, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]);
    out.extend(message(mini, parse::MSG_MAIN_INIT, &main_init(SESSION)));
    out.extend(message(mini, parse::MSG_MAIN_NAME, &main_name("vm-one")));
    out.extend(message(mini, parse::MSG_MAIN_UUID, &UUID));
    out
}

fn main_expected() -> Value {
    json!({
        "version": "2.2",
        "sessionId": "deadbeef",
        "channelType": "main",
        "serverName": "vm-one",
        "serverUUID": "12345678-9abc-def0-0fed-cba987654321",
    })
}

/// A main channel whose server advertises mini headers when `mini`.
fn handmade_main(mini: bool) -> (Vec<u8>, Vec<u8>) {
    let c2s = client_bytes([0; 4], 1, CLIENT_COMMON, MAIN_CAPS);
    let server_common = if mini { CLIENT_COMMON } else { 0b0001 };
    let mut s2c = server_link(server_common, MAIN_CAPS);
    s2c.extend(main_messages(mini));
    (c2s, s2c)
}

/// A small deterministic generator for random tests (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Feeds `data` in random-sized chunks; returns the last verdict.
fn feed_randomly(
    session: &mut SpiceSession,
    direction: Direction,
    data: &[u8],
    rng: &mut XorShift,
) -> Verdict {
    let mut verdict = session.verdict();
    let mut rest = data;
    while !rest.is_empty() && verdict.wants_more() {
        let n = 1 + rng.below(rest.len().min(300));
        let (chunk, tail) = rest.split_at(n);
        verdict = session.feed(direction, chunk);
        rest = tail;
    }
    verdict
}

// ---- tests: captures ----

#[test]
fn captures_follow_their_script() {
    for f in fixtures() {
        let session = replay(f.script_chunks());
        assert_eq!(session.verdict(), Verdict::AffirmedComplete, "{}", f.name);
        assert_eq!(props(&session), f.expected, "{}", f.name);
    }
}

#[test]
fn captures_in_one_byte_chunks() {
    for f in fixtures() {
        let session = replay(f.byte_chunks());
        assert_eq!(session.verdict(), Verdict::AffirmedComplete, "{}", f.name);
        assert_eq!(props(&session), f.expected, "{}", f.name);
    }
}

#[test]
fn captures_in_one_chunk_per_direction() {
    for f in fixtures() {
        let session = replay(f.direction_chunks());
        assert_eq!(session.verdict(), Verdict::AffirmedComplete, "{}", f.name);
        assert_eq!(props(&session), f.expected, "{}", f.name);
    }
}

#[test]
fn captures_truncated_at_every_length() {
    for f in fixtures() {
        check_truncations(&f.script_chunks(), &f.expected, &f.name);
    }
}

#[test]
fn capture_properties_appear_as_soon_as_known() {
    for f in fixtures() {
        let mut session = SpiceSession::new();
        assert_eq!(session.feed(C2S, &f.c2s[..4]), Verdict::AffirmedIncomplete);
        assert_eq!(session.properties(), None, "{}", f.name);
        session.feed(C2S, &f.c2s[4..parse::LINK_HEADER_LEN]);
        assert_eq!(props(&session), json!({"version": "2.2"}), "{}", f.name);
        let link_len = f.script[0].1;
        let verdict = session.feed(C2S, &f.c2s[parse::LINK_HEADER_LEN..link_len]);
        let channel = f.expected["channelType"].clone();
        assert_eq!(props(&session)["channelType"], channel, "{}", f.name);
        if channel == "main" {
            assert_eq!(verdict, Verdict::AffirmedIncomplete);
            assert!(props(&session).get("sessionId").is_none());
        } else {
            assert_eq!(verdict, Verdict::AffirmedComplete, "{}", f.name);
            assert_eq!(props(&session), f.expected, "{}", f.name);
        }
    }
}

#[test]
fn main_capture_with_server_bytes_before_the_client_link_is_whole() {
    // Not what a real server does, but the host may see it: the server's bytes are held
    // until the client's link message says how to read them.
    let f = fixtures()
        .into_iter()
        .find(|f| f.expected["channelType"] == "main")
        .expect("a main capture");
    let session = replay([(C2S, &f.c2s[..20]), (S2C, &f.s2c[..]), (C2S, &f.c2s[20..])]);
    assert_eq!(session.verdict(), Verdict::AffirmedComplete);
    assert_eq!(props(&session), f.expected);
}

#[test]
fn main_channel_session_id_matches_the_other_channels() {
    let ids: Vec<Value> = fixtures()
        .iter()
        .map(|f| props(&replay(f.script_chunks()))["sessionId"].clone())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}

// ---- tests: hand-built links ----

#[test]
fn every_channel_type() {
    let names = [
        (0u8, "unknown"),
        (1, "main"),
        (2, "display"),
        (3, "inputs"),
        (4, "cursor"),
        (5, "playback"),
        (6, "record"),
        (7, "tunnel"),
        (8, "smartcard"),
        (9, "usbredir"),
        (10, "port"),
        (11, "webdav"),
        (12, "unknown"),
        (255, "unknown"),
    ];
    for (channel_type, name) in names {
        let mut session = SpiceSession::new();
        let link = client_link(SESSION, channel_type, CLIENT_COMMON, 0);
        let verdict = session.feed(C2S, &link);
        let found = props(&session);
        assert_eq!(found["channelType"], name, "type {channel_type}");
        assert_eq!(found["version"], "2.2", "type {channel_type}");
        if channel_type == parse::CHANNEL_MAIN {
            assert_eq!(verdict, Verdict::AffirmedIncomplete);
            assert!(
                found.get("sessionId").is_none(),
                "main's link carries no session"
            );
        } else {
            assert_eq!(verdict, Verdict::AffirmedComplete, "type {channel_type}");
            assert_eq!(found["sessionId"], "deadbeef", "type {channel_type}");
        }
    }
}

#[test]
fn version_comes_from_the_client_header() {
    let mut link = client_link(SESSION, 2, 0, 0);
    link[8..12].copy_from_slice(&7u32.to_le_bytes());
    let session = replay([(C2S, &link[..])]);
    assert_eq!(props(&session)["version"], "2.7");
}

#[test]
fn handmade_main_with_mini_and_full_headers() {
    for mini in [true, false] {
        let (c2s, s2c) = handmade_main(mini);
        let chunks = [(C2S, &c2s[..]), (S2C, &s2c[..])];
        let session = replay(chunks);
        assert_eq!(session.verdict(), Verdict::AffirmedComplete, "mini {mini}");
        assert_eq!(props(&session), main_expected(), "mini {mini}");

        let bytes: Vec<_> = chunks
            .iter()
            .flat_map(|&(d, c)| c.chunks(1).map(move |b| (d, b)))
            .collect();
        let session = replay(bytes);
        assert_eq!(
            props(&session),
            main_expected(),
            "mini {mini}, 1-byte chunks"
        );
        check_truncations(&chunks, &main_expected(), &format!("handmade mini {mini}"));
    }
}

#[test]
fn handmade_display_truncated_at_every_length() {
    let c2s = client_bytes(SESSION, 2, CLIENT_COMMON, 0b11);
    let s2c = server_link(CLIENT_COMMON, 0b11);
    let expected = json!({"version": "2.2", "sessionId": "deadbeef", "channelType": "display"});
    let chunks = [(C2S, &c2s[..]), (S2C, &s2c[..])];
    check_truncations(&chunks, &expected, "handmade display");
    assert_eq!(replay(chunks).verdict(), Verdict::AffirmedComplete);
}

#[test]
fn main_without_name_and_uuid_cap_completes_on_init() {
    // The server sends NAME and UUID only to clients that advertise NAME_AND_UUID.
    let c2s = client_bytes([0; 4], 1, CLIENT_COMMON, 0);
    let mut s2c = server_link(CLIENT_COMMON, MAIN_CAPS);
    s2c.extend(message(true, parse::MSG_MAIN_INIT, &main_init(SESSION)));
    let session = replay([(C2S, &c2s[..]), (S2C, &s2c[..])]);
    assert_eq!(session.verdict(), Verdict::AffirmedComplete);
    assert_eq!(
        props(&session),
        json!({"version": "2.2", "sessionId": "deadbeef", "channelType": "main"})
    );
}

// ---- tests: not SPICE ----

#[test]
fn other_protocols_are_denied_at_once() {
    let inputs: [&[u8]; 6] = [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01",
        b"RFB 003.008\n",
        b"REDX\x02\x00\x00\x00",
        b"\0\0\0\0",
    ];
    for input in inputs {
        let session = replay([(C2S, input)]);
        assert_eq!(session.verdict(), Verdict::Denied, "{input:?}");
        assert_eq!(session.properties(), None, "{input:?}");

        // Byte by byte, the verdict is Denied by the first byte that leaves the magic.
        let mut session = SpiceSession::new();
        let wrong = input
            .iter()
            .zip(parse::MAGIC)
            .position(|(a, b)| *a != b)
            .expect("input differs from the magic");
        for (i, byte) in input.iter().enumerate().take(wrong + 1) {
            let verdict = session.feed(C2S, std::slice::from_ref(byte));
            let want = if i < wrong {
                Verdict::Undecided
            } else {
                Verdict::Denied
            };
            assert_eq!(verdict, want, "{input:?} byte {i}");
        }
    }
}

#[test]
fn a_server_speaking_first_is_denied() {
    let mut session = SpiceSession::new();
    assert_eq!(session.feed(S2C, b"REDQ"), Verdict::Denied);
    let mut session = SpiceSession::new();
    assert_eq!(session.feed(C2S, b"RE"), Verdict::Undecided);
    assert_eq!(session.feed(S2C, b"220 ftp\r\n"), Verdict::Denied);
    // Empty chunks say nothing.
    let mut session = SpiceSession::new();
    assert_eq!(session.feed(S2C, b""), Verdict::Undecided);
    assert_eq!(session.feed(C2S, b""), Verdict::Undecided);
    assert_eq!(session.feed(C2S, b"REDQ"), Verdict::AffirmedIncomplete);
}

#[test]
fn denied_stays_denied() {
    let mut session = SpiceSession::new();
    assert_eq!(session.feed(C2S, b"X"), Verdict::Denied);
    let link = client_link(SESSION, 2, 0, 0);
    assert_eq!(session.feed(C2S, &link), Verdict::Denied);
    assert_eq!(session.properties(), None);
}

// ---- tests: hostile lengths ----

#[test]
fn hostile_client_link_sizes() {
    let filler = vec![0xaa; MAX_ITEM];
    for size in [0usize, 17, MAX_ITEM + 1, u32::MAX as usize] {
        let mut session = SpiceSession::new();
        session.feed(C2S, &link_header(2, 2, size));
        let verdict = session.feed(C2S, &filler);
        assert_eq!(verdict, Verdict::AffirmedIncomplete, "size {size}");
        assert_eq!(props(&session), json!({"version": "2.2"}), "size {size}");
        assert!(
            session.buffered() < 1024,
            "size {size}: {}",
            session.buffered()
        );
    }
    // A large but possible size is gathered, never beyond itself.
    let mut session = SpiceSession::new();
    session.feed(C2S, &link_header(2, 2, 60_000));
    session.feed(C2S, &filler[..100]);
    assert!(session.buffered() <= 60_000);
}

#[test]
fn hostile_caps_fields() {
    let good = client_link(SESSION, 2, CLIENT_COMMON, 0);
    let mess = parse::LINK_HEADER_LEN;
    let cases: [(usize, u32); 5] = [
        (mess + 14, 1000),     // caps_offset past the message
        (mess + 14, u32::MAX), // caps_offset at the end of the range
        (mess + 14, 3),        // caps_offset inside the fixed part
        (mess + 6, u32::MAX),  // num_common_caps
        (mess + 10, 0x4000_0000),
    ];
    for (at, value) in cases {
        let mut link = good.clone();
        link[at..at + 4].copy_from_slice(&value.to_le_bytes());
        let session = replay([(C2S, &link[..])]);
        assert_eq!(
            session.verdict(),
            Verdict::AffirmedIncomplete,
            "{at}={value}"
        );
        assert_eq!(props(&session), json!({"version": "2.2"}), "{at}={value}");
    }
}

#[test]
fn hostile_server_link() {
    let c2s = client_bytes([0; 4], 1, CLIENT_COMMON, MAIN_CAPS);
    let good = server_link(CLIENT_COMMON, MAIN_CAPS);
    let mut huge_reply = good.clone();
    huge_reply[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut refused = good.clone();
    refused[16] = 7;
    let mut failed_result = good.clone();
    let result_at = good.len() - 4;
    failed_result[result_at] = 1;
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    for (what, mut s2c) in [
        ("huge reply", huge_reply),
        ("refused", refused),
        ("failed result", failed_result),
        ("bad magic", bad_magic),
    ] {
        s2c.extend(main_messages(true));
        let session = replay([(C2S, &c2s[..]), (S2C, &s2c[..])]);
        assert_eq!(session.verdict(), Verdict::AffirmedIncomplete, "{what}");
        assert!(props(&session).get("sessionId").is_none(), "{what}");
        assert!(session.buffered() < 1024, "{what}");
    }
}

#[test]
fn hostile_main_messages() {
    let c2s = client_bytes([0; 4], 1, CLIENT_COMMON, MAIN_CAPS);
    let mut s2c = server_link(CLIENT_COMMON, MAIN_CAPS);
    // Zero-length and short messages of every type read are ignored, not fatal.
    for msg_type in [
        parse::MSG_MAIN_INIT,
        parse::MSG_MAIN_NAME,
        parse::MSG_MAIN_UUID,
    ] {
        s2c.extend(message(true, msg_type, &[]));
        s2c.extend(message(true, msg_type, &[1, 2, 3]));
    }
    // A name longer than its message, and one of u32::MAX bytes.
    s2c.extend(message(true, parse::MSG_MAIN_NAME, &le(&[500, 0x41414141])));
    s2c.extend(message(true, parse::MSG_MAIN_NAME, &le(&[u32::MAX])));
    s2c.extend(main_messages(true));
    let session = replay([(C2S, &c2s[..]), (S2C, &s2c[..])]);
    assert_eq!(session.verdict(), Verdict::AffirmedComplete);
    assert_eq!(props(&session), main_expected());

    // A message declaring u32::MAX bytes is passed over, never gathered.
    let mut s2c = server_link(CLIENT_COMMON, MAIN_CAPS);
    let mut header = message(true, parse::MSG_MAIN_NAME, &[]);
    header[2..6].copy_from_slice(&u32::MAX.to_le_bytes());
    s2c.extend(header);
    s2c.extend(vec![0x41; MAX_ITEM]);
    let session = replay([(C2S, &c2s[..]), (S2C, &s2c[..])]);
    assert_eq!(session.verdict(), Verdict::AffirmedIncomplete);
    assert!(session.buffered() < 1024, "{}", session.buffered());
}

#[test]
fn held_server_bytes_are_bounded() {
    let mut session = SpiceSession::new();
    session.feed(C2S, b"REDQ");
    session.feed(S2C, &server_link(CLIENT_COMMON, MAIN_CAPS));
    let flood = vec![0u8; MAX_ITEM];
    session.feed(S2C, &flood);
    session.feed(S2C, &flood);
    assert!(session.buffered() <= MAX_ITEM, "{}", session.buffered());
    assert_eq!(session.verdict(), Verdict::AffirmedIncomplete);
}

// ---- tests: random input ----

#[test]
fn random_bytes_never_panic() {
    let (main_c2s, main_s2c) = handmade_main(true);
    let client = client_bytes([0; 4], 1, CLIENT_COMMON, MAIN_CAPS);
    let linked = server_link(CLIENT_COMMON, MAIN_CAPS);
    for seed in 1..=400u64 {
        let mut rng = XorShift::new(seed);
        let len = rng.below(700);
        let noise = rng.bytes(len);

        // Noise alone: Denied unless it happens to start like the magic.
        let mut session = SpiceSession::new();
        let verdict = feed_randomly(&mut session, C2S, &noise, &mut rng);
        if !parse::magic_prefix_ok(&noise) {
            assert_eq!(verdict, Verdict::Denied, "seed {seed}");
        }
        feed_randomly(&mut session, S2C, &noise, &mut rng);

        // The magic, then noise.
        let mut c2s = parse::MAGIC.to_vec();
        c2s.extend(&noise);
        let mut session = SpiceSession::new();
        let verdict = feed_randomly(&mut session, C2S, &c2s, &mut rng);
        assert!(verdict.is_affirmed(), "seed {seed}");
        feed_randomly(&mut session, S2C, &noise, &mut rng);
        check_sane(&session, seed);

        // A real main link, then noise from the server, before and after its link stage.
        for server_start in [&[][..], &linked[..]] {
            let mut session = SpiceSession::new();
            feed_randomly(&mut session, C2S, &client, &mut rng);
            let mut s2c = server_start.to_vec();
            s2c.extend(&noise);
            feed_randomly(&mut session, S2C, &s2c, &mut rng);
            check_sane(&session, seed);
        }

        // A valid main session with a few bytes flipped.
        let mut c2s = main_c2s.clone();
        let mut s2c = main_s2c.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(c2s.len() + s2c.len());
            let flip = 1 + rng.below(255) as u8;
            match at.checked_sub(c2s.len()) {
                None => c2s[at] ^= flip,
                Some(at) => s2c[at] ^= flip,
            }
        }
        let mut session = SpiceSession::new();
        feed_randomly(&mut session, C2S, &c2s, &mut rng);
        feed_randomly(&mut session, S2C, &s2c, &mut rng);
        check_sane(&session, seed);
    }
}

/// Properties are a JSON object of known keys and memory stays bounded.
fn check_sane(session: &SpiceSession, seed: u64) {
    let keys = [
        "version",
        "sessionId",
        "channelType",
        "serverName",
        "serverUUID",
    ];
    let found = props(session);
    for key in found.as_object().expect("object").keys() {
        assert!(keys.contains(&key.as_str()), "seed {seed}: key {key}");
    }
    assert!(session.buffered() <= 2 * MAX_ITEM, "seed {seed}");
}

// ---- tests: plugin and FFI ----

#[test]
fn configuration_must_be_empty() {
    assert!(Spice::new("", host_log()).is_ok());
    assert!(Spice::new("  ", host_log()).is_ok());
    let error = Spice::new("port=5900\nmore", host_log()).expect_err("config rejected");
    assert!(!error.contains('\n'), "one line: {error}");
    assert!(error.contains("no configuration"), "{error}");
    let spice = Spice::new("", host_log()).expect("empty config");
    assert_eq!(spice.protocol(), "spice");
}

#[test]
fn works_through_the_ffi_boundary() {
    let plugin = new_discriminator::<Spice>(RStr::from_str(""), host_log())
        .into_result()
        .expect("plugin built");
    assert_eq!(plugin.protocol().as_str(), "spice");
    for f in fixtures() {
        let mut session = plugin.session().into_result().expect("session");
        let mut verdict = Verdict::Undecided;
        for (direction, chunk) in f.script_chunks() {
            verdict = session
                .feed(direction, RSlice::from_slice(chunk))
                .into_result()
                .expect("feed");
            if !verdict.wants_more() {
                break;
            }
        }
        assert_eq!(verdict, Verdict::AffirmedComplete, "{}", f.name);
        let text = session.properties().into_result().expect("properties");
        let found: Value = serde_json::from_str(text.as_str()).expect("JSON");
        assert_eq!(found, f.expected, "{}", f.name);
    }

    // Before any byte the FFI form reports "no properties" as an empty string.
    let session = plugin.session().into_result().expect("session");
    let text = session.properties().into_result().expect("properties");
    assert_eq!(text.as_str(), "");

    let refused = new_discriminator::<Spice>(RStr::from_str("x=1"), host_log()).into_result();
    let message = refused.err().expect("config refused");
    assert!(message.as_str().contains("no configuration"), "{message}");
}
