//! Pure decoders for the few parts of the SPICE wire format the discriminator reads.
//!
//! Every function here takes bytes and returns a value: no I/O, no state, no panic, no read
//! outside the slice it is given. A slice shorter than the structure (or than the size its
//! header declared) gives [`Parsed::Incomplete`], which means "wait for more bytes", never an
//! error; bytes that cannot be the structure give [`Parsed::Invalid`]. All integers on the wire
//! are little-endian.
//!
//! Layouts (from spice-protocol's `spice/protocol.h` and `spice/enums.h`):
//! - SpiceLinkHeader: magic `REDQ`, u32 major, u32 minor, u32 size of what follows;
//! - SpiceLinkMess (client): u32 connection_id, u8 channel_type, u8 channel_id,
//!   u32 num_common_caps, u32 num_channel_caps, u32 caps_offset, then the capability words;
//! - SpiceLinkReply (server): u32 error, 162-byte public key, then the same three caps fields;
//! - the link result (server): u32, 0 for success;
//! - data headers: mini (u16 type, u32 size) when both peers advertised
//!   `SPICE_COMMON_CAP_MINI_HEADER`, else full (u64 serial, u16 type, u32 size, u32 sub_list).

/// The four bytes every SPICE link header starts with.
pub const MAGIC: [u8; 4] = *b"REDQ";
/// Length of SpiceLinkHeader.
pub const LINK_HEADER_LEN: usize = 16;
/// Length of SpiceLinkMess before its capability words.
pub const LINK_MESS_LEN: usize = 18;
/// Length of the server's RSA public key in SpiceLinkReply.
pub const PUB_KEY_LEN: usize = 162;
/// Length of SpiceLinkReply before its capability words.
pub const LINK_REPLY_LEN: usize = 4 + PUB_KEY_LEN + 12;
/// Length of the server's link result.
pub const LINK_RESULT_LEN: usize = 4;
/// Length of SpiceMiniDataHeader.
pub const MINI_HEADER_LEN: usize = 6;
/// Length of SpiceDataHeader.
pub const FULL_HEADER_LEN: usize = 18;
/// Length of SpiceMsgMainInit.
pub const MAIN_INIT_LEN: usize = 32;
/// Length of a UUID in SPICE_MSG_MAIN_UUID.
pub const UUID_LEN: usize = 16;

/// SPICE_CHANNEL_MAIN.
pub const CHANNEL_MAIN: u8 = 1;
/// SPICE_MSG_MAIN_INIT.
pub const MSG_MAIN_INIT: u16 = 103;
/// SPICE_MSG_MAIN_NAME.
pub const MSG_MAIN_NAME: u16 = 113;
/// SPICE_MSG_MAIN_UUID.
pub const MSG_MAIN_UUID: u16 = 114;
/// SPICE_COMMON_CAP_MINI_HEADER.
pub const COMMON_CAP_MINI_HEADER: u32 = 3;
/// SPICE_MAIN_CAP_NAME_AND_UUID: without it the server sends neither name nor UUID.
pub const MAIN_CAP_NAME_AND_UUID: u32 = 1;

/// Channel names, indexed by channel type minus one (spice-protocol's SpiceChannelType).
const CHANNEL_NAMES: [&str; 11] = [
    "main",
    "display",
    "inputs",
    "cursor",
    "playback",
    "record",
    "tunnel",
    "smartcard",
    "usbredir",
    "port",
    "webdav",
];

/// What decoding a slice gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The slice is shorter than the structure: wait for more bytes.
    Incomplete,
    /// The structure, decoded.
    Done(T),
    /// The bytes cannot be this structure; the text says why.
    Invalid(&'static str),
}

/// A peer's capability bitmap: bit `n` of word `n / 32`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps(pub Vec<u32>);

impl Caps {
    /// Whether capability number `cap` is set.
    pub fn has(&self, cap: u32) -> bool {
        let word = usize::try_from(cap / 32).unwrap_or(usize::MAX);
        self.0
            .get(word)
            .is_some_and(|bits| bits & (1 << (cap % 32)) != 0)
    }
}

/// SpiceLinkHeader, magic checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHeader {
    pub major: u32,
    pub minor: u32,
    /// Bytes of SpiceLinkMess or SpiceLinkReply that follow.
    pub size: u32,
}

/// The client's SpiceLinkMess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMess {
    /// In wire order; 0 on a session's first (main) channel.
    pub connection_id: [u8; 4],
    pub channel_type: u8,
    pub channel_id: u8,
    pub common_caps: Caps,
    pub channel_caps: Caps,
}

/// The server's SpiceLinkReply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReply {
    /// SPICE_LINK_ERR_*; 0 for success. On an error the capabilities are left empty.
    pub error: u32,
    pub common_caps: Caps,
    pub channel_caps: Caps,
}

/// A data header, mini or full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub msg_type: u16,
    /// Bytes of message body that follow.
    pub size: u32,
}

/// Whether `bytes` (however few) can be the start of the SPICE magic.
pub fn magic_prefix_ok(bytes: &[u8]) -> bool {
    let n = bytes.len().min(MAGIC.len());
    bytes.get(..n) == MAGIC.get(..n)
}

/// Decodes a SpiceLinkHeader from the start of `bytes`.
pub fn link_header(bytes: &[u8]) -> Parsed<LinkHeader> {
    if !magic_prefix_ok(bytes) {
        return Parsed::Invalid("not the SPICE magic");
    }
    match (u32_at(bytes, 4), u32_at(bytes, 8), u32_at(bytes, 12)) {
        (Some(major), Some(minor), Some(size)) => Parsed::Done(LinkHeader { major, minor, size }),
        _ => Parsed::Incomplete,
    }
}

/// Decodes a SpiceLinkMess of the `size` bytes its link header declared.
pub fn link_mess(bytes: &[u8], size: u32) -> Parsed<LinkMess> {
    if usize_of(size) < LINK_MESS_LEN {
        return Parsed::Invalid("link message shorter than SpiceLinkMess");
    }
    let Some(body) = declared(bytes, size) else {
        return Parsed::Incomplete;
    };
    let fixed = (
        bytes_at::<4>(body, 0),
        body.get(4),
        body.get(5),
        u32_at(body, 6),
        u32_at(body, 10),
        u32_at(body, 14),
    );
    let (Some(id), Some(&channel_type), Some(&channel_id), Some(common), Some(channel), Some(at)) =
        fixed
    else {
        return Parsed::Invalid("link message shorter than SpiceLinkMess");
    };
    match caps(body, LINK_MESS_LEN, at, common, channel) {
        Some((common_caps, channel_caps)) => Parsed::Done(LinkMess {
            connection_id: id,
            channel_type,
            channel_id,
            common_caps,
            channel_caps,
        }),
        None => Parsed::Invalid("capabilities outside the link message"),
    }
}

/// Decodes a SpiceLinkReply of the `size` bytes its link header declared.
pub fn link_reply(bytes: &[u8], size: u32) -> Parsed<LinkReply> {
    if usize_of(size) < LINK_REPLY_LEN {
        return Parsed::Invalid("link reply shorter than SpiceLinkReply");
    }
    let Some(body) = declared(bytes, size) else {
        return Parsed::Incomplete;
    };
    let counts_at = 4 + PUB_KEY_LEN;
    let fixed = (
        u32_at(body, 0),
        u32_at(body, counts_at),
        u32_at(body, counts_at + 4),
        u32_at(body, counts_at + 8),
    );
    let (Some(error), Some(common), Some(channel), Some(at)) = fixed else {
        return Parsed::Invalid("link reply shorter than SpiceLinkReply");
    };
    // A refusing server's capabilities mean nothing: it closes the connection next.
    if error != 0 {
        return Parsed::Done(LinkReply {
            error,
            common_caps: Caps::default(),
            channel_caps: Caps::default(),
        });
    }
    match caps(body, LINK_REPLY_LEN, at, common, channel) {
        Some((common_caps, channel_caps)) => Parsed::Done(LinkReply {
            error,
            common_caps,
            channel_caps,
        }),
        None => Parsed::Invalid("capabilities outside the link reply"),
    }
}

/// Decodes the server's link result (0 for success).
pub fn link_result(bytes: &[u8]) -> Parsed<u32> {
    match u32_at(bytes, 0) {
        Some(result) => Parsed::Done(result),
        None => Parsed::Incomplete,
    }
}

/// The length of a data header: mini when both peers advertised it, else full.
pub fn message_header_len(mini: bool) -> usize {
    if mini {
        MINI_HEADER_LEN
    } else {
        FULL_HEADER_LEN
    }
}

/// Decodes a data header, mini or full.
pub fn message_header(bytes: &[u8], mini: bool) -> Parsed<MessageHeader> {
    // The full header starts with a u64 serial that the discriminator has no use for.
    let at = if mini { 0 } else { 8 };
    if bytes.len() < message_header_len(mini) {
        return Parsed::Incomplete;
    }
    match (u16_at(bytes, at), u32_at(bytes, at + 2)) {
        (Some(msg_type), Some(size)) => Parsed::Done(MessageHeader { msg_type, size }),
        _ => Parsed::Incomplete,
    }
}

/// The session id (wire order) from a SPICE_MSG_MAIN_INIT body of `size` bytes.
pub fn main_init_session_id(bytes: &[u8], size: u32) -> Parsed<[u8; 4]> {
    if usize_of(size) < MAIN_INIT_LEN {
        return Parsed::Invalid("main init shorter than SpiceMsgMainInit");
    }
    let Some(body) = declared(bytes, size) else {
        return Parsed::Incomplete;
    };
    match bytes_at::<4>(body, 0) {
        Some(id) => Parsed::Done(id),
        None => Parsed::Invalid("main init shorter than SpiceMsgMainInit"),
    }
}

/// The server's name from a SPICE_MSG_MAIN_NAME body of `size` bytes, without its NUL.
pub fn main_name(bytes: &[u8], size: u32) -> Parsed<String> {
    if usize_of(size) < 4 {
        return Parsed::Invalid("main name shorter than its length field");
    }
    let Some(body) = declared(bytes, size) else {
        return Parsed::Incomplete;
    };
    let name = u32_at(body, 0).and_then(|len| {
        let end = 4usize.checked_add(usize_of(len))?;
        body.get(4..end)
    });
    let Some(name) = name else {
        return Parsed::Invalid("main name longer than its message");
    };
    // The name is a C string: it ends at its NUL, which the length counts.
    let text = name.split(|&b| b == 0).next().unwrap_or_default();
    Parsed::Done(String::from_utf8_lossy(text).into_owned())
}

/// The server's UUID from a SPICE_MSG_MAIN_UUID body of `size` bytes.
pub fn main_uuid(bytes: &[u8], size: u32) -> Parsed<[u8; UUID_LEN]> {
    if usize_of(size) < UUID_LEN {
        return Parsed::Invalid("main uuid shorter than a UUID");
    }
    let Some(body) = declared(bytes, size) else {
        return Parsed::Incomplete;
    };
    match bytes_at::<UUID_LEN>(body, 0) {
        Some(uuid) => Parsed::Done(uuid),
        None => Parsed::Invalid("main uuid shorter than a UUID"),
    }
}

/// The name of a channel type, `unknown` outside spice-protocol's list.
pub fn channel_type_name(channel_type: u8) -> &'static str {
    usize::from(channel_type)
        .checked_sub(1)
        .and_then(|index| CHANNEL_NAMES.get(index))
        .copied()
        .unwrap_or("unknown")
}

/// A link version as `major.minor`.
pub fn version_string(major: u32, minor: u32) -> String {
    format!("{major}.{minor}")
}

/// Bytes as lower-case hex in the order given.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A UUID in wire order as lower-case 8-4-4-4-12 text.
pub fn uuid_string(uuid: &[u8; UUID_LEN]) -> String {
    let (a, rest) = uuid.split_at(4);
    let (b, rest) = rest.split_at(2);
    let (c, rest) = rest.split_at(2);
    let (d, e) = rest.split_at(2);
    format!("{}-{}-{}-{}-{}", hex(a), hex(b), hex(c), hex(d), hex(e))
}

// ---- helpers ----

/// A wire size as `usize`, saturating where `usize` is narrower than 32 bits.
fn usize_of(size: u32) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// The first `size` bytes, once that many have arrived.
fn declared(bytes: &[u8], size: u32) -> Option<&[u8]> {
    bytes.get(..usize_of(size))
}

/// `N` bytes at `at`, if the slice holds them.
fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    bytes.get(at..end)?.try_into().ok()
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    bytes_at::<2>(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes_at::<4>(bytes, at).map(u32::from_le_bytes)
}

/// The common and channel capability words of a link message or reply whose body is `body`.
///
/// `at` is relative to the body's start and must not point into the fixed part (`fixed`
/// bytes); both lists must lie inside the body. Word counts are checked against the body
/// before anything is allocated, so a hostile count cannot cause a large allocation.
fn caps(body: &[u8], fixed: usize, at: u32, common: u32, channel: u32) -> Option<(Caps, Caps)> {
    let start = usize_of(at);
    if start < fixed {
        return None;
    }
    let common_end = start.checked_add(usize_of(common).checked_mul(4)?)?;
    let channel_end = common_end.checked_add(usize_of(channel).checked_mul(4)?)?;
    let common_bytes = body.get(start..common_end)?;
    let channel_bytes = body.get(common_end..channel_end)?;
    Some((words(common_bytes), words(channel_bytes)))
}

/// Little-endian u32 words; the caller passes a multiple of four bytes.
fn words(bytes: &[u8]) -> Caps {
    Caps(
        bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u32) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for v in [2u32, 2, size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn mess(id: [u8; 4], channel_type: u8, common: &[u32], channel: &[u32]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.extend_from_slice(&[channel_type, 0]);
        for v in [
            common.len() as u32,
            channel.len() as u32,
            LINK_MESS_LEN as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for w in common.iter().chain(channel) {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    #[test]
    fn magic_prefixes() {
        assert!(magic_prefix_ok(b""));
        assert!(magic_prefix_ok(b"RE"));
        assert!(magic_prefix_ok(b"REDQ and more"));
        assert!(!magic_prefix_ok(b"RX"));
        assert!(!magic_prefix_ok(b"SSH-"));
    }

    #[test]
    fn link_header_needs_all_sixteen_bytes() {
        let bytes = header(26);
        for len in 0..LINK_HEADER_LEN {
            assert_eq!(link_header(&bytes[..len]), Parsed::Incomplete, "len {len}");
        }
        assert_eq!(
            link_header(&bytes),
            Parsed::Done(LinkHeader {
                major: 2,
                minor: 2,
                size: 26
            })
        );
        assert!(matches!(
            link_header(b"GET / HTTP/1.1\r\n"),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn link_mess_decodes_and_checks_caps() {
        let body = mess([1, 2, 3, 4], 2, &[0b1101], &[0xf]);
        let size = body.len() as u32;
        for len in 0..body.len() {
            assert_eq!(
                link_mess(&body[..len], size),
                Parsed::Incomplete,
                "len {len}"
            );
        }
        let Parsed::Done(m) = link_mess(&body, size) else {
            panic!("link message not decoded");
        };
        assert_eq!(m.connection_id, [1, 2, 3, 4]);
        assert_eq!(m.channel_type, 2);
        assert!(m.common_caps.has(COMMON_CAP_MINI_HEADER));
        assert!(!m.common_caps.has(1));
        assert!(m.channel_caps.has(MAIN_CAP_NAME_AND_UUID));
        assert!(!m.channel_caps.has(40));

        assert!(matches!(link_mess(&body, 17), Parsed::Invalid(_)));
        let mut far = body.clone();
        far[14..18].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(link_mess(&far, size), Parsed::Invalid(_)));
        let mut inside = body.clone();
        inside[14..18].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(link_mess(&inside, size), Parsed::Invalid(_)));
        let mut many = body;
        many[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        many[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(link_mess(&many, size), Parsed::Invalid(_)));
    }

    #[test]
    fn link_reply_error_skips_caps() {
        let mut body = vec![0u8; LINK_REPLY_LEN];
        body[0] = 7;
        let Parsed::Done(reply) = link_reply(&body, LINK_REPLY_LEN as u32) else {
            panic!("reply not decoded");
        };
        assert_eq!(reply.error, 7);
        assert!(matches!(link_reply(&body, 10), Parsed::Invalid(_)));
        assert_eq!(
            link_reply(&body[..100], LINK_REPLY_LEN as u32),
            Parsed::Incomplete
        );
    }

    #[test]
    fn message_headers() {
        let mini = [0x67, 0x00, 0x20, 0, 0, 0];
        assert_eq!(
            message_header(&mini, true),
            Parsed::Done(MessageHeader {
                msg_type: MSG_MAIN_INIT,
                size: 32
            })
        );
        assert_eq!(message_header(&mini[..5], true), Parsed::Incomplete);
        let mut full = vec![9u8; 8];
        full.extend_from_slice(&[0x71, 0x00, 0x05, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            message_header(&full, false),
            Parsed::Done(MessageHeader {
                msg_type: MSG_MAIN_NAME,
                size: 5
            })
        );
        assert_eq!(message_header(&full[..17], false), Parsed::Incomplete);
    }

    #[test]
    fn main_messages() {
        let mut init = vec![0x3c, 0x28, 0x1d, 0x68];
        init.resize(MAIN_INIT_LEN, 0);
        assert_eq!(
            main_init_session_id(&init, 32),
            Parsed::Done([0x3c, 0x28, 0x1d, 0x68])
        );
        assert_eq!(main_init_session_id(&init[..31], 32), Parsed::Incomplete);
        assert!(matches!(main_init_session_id(&[], 0), Parsed::Invalid(_)));

        let name = [4, 0, 0, 0, b'v', b'm', b'1', 0];
        assert_eq!(main_name(&name, 8), Parsed::Done("vm1".to_string()));
        assert_eq!(main_name(&name[..6], 8), Parsed::Incomplete);
        let too_long = [200, 0, 0, 0, b'v'];
        assert!(matches!(main_name(&too_long, 5), Parsed::Invalid(_)));
        let huge = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(main_name(&huge, 4), Parsed::Invalid(_)));
        assert!(matches!(main_name(&[], 0), Parsed::Invalid(_)));

        let uuid: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        assert_eq!(main_uuid(&uuid, 16), Parsed::Done(uuid));
        assert!(matches!(main_uuid(&uuid, 3), Parsed::Invalid(_)));
    }

    #[test]
    fn formatting() {
        assert_eq!(hex(&[0x3c, 0x28, 0x1d, 0x68]), "3c281d68");
        let uuid = [
            0xe5, 0x48, 0xa8, 0x27, 0x89, 0x37, 0x40, 0x47, 0xa7, 0x56, 0xe5, 0x69, 0x37, 0x01,
            0x71, 0x28,
        ];
        assert_eq!(uuid_string(&uuid), "e548a827-8937-4047-a756-e56937017128");
        assert_eq!(version_string(2, 2), "2.2");
        assert_eq!(channel_type_name(0), "unknown");
        assert_eq!(channel_type_name(1), "main");
        assert_eq!(channel_type_name(11), "webdav");
        assert_eq!(channel_type_name(12), "unknown");
        assert_eq!(channel_type_name(255), "unknown");
    }
}
