//! One tunnel's incremental SPICE recogniser: both directions' bytes in, verdict and
//! properties out.
//!
//! Each direction runs a small state machine over the items of the link stage (see
//! [`crate::parse`]). An item split across chunks is gathered in a buffer holding only that
//! item; message bodies nobody needs are passed over by count, never buffered. The client side
//! stops after its SpiceLinkMess (nothing later in it is a property). The server side reads the
//! link reply and result, then — on the main channel only — the messages up to
//! SPICE_MSG_MAIN_NAME and _UUID.

use quictun_plugin_api::{Direction, DiscriminatorSession, Verdict};
use serde_json::{Map, Value};

use crate::parse::{self, Caps, LinkMess, Parsed};

/// The largest item the session buffers. The host feeds at most 64 KiB per direction, so a
/// larger item could never complete: the session gives up on it at once instead.
pub const MAX_ITEM: usize = 64 * 1024;

/// What the session has learnt about the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// The client's link version, `major.minor`.
    pub version: Option<String>,
    /// The session id as 8 hex digits in wire order.
    pub session_id: Option<String>,
    pub channel_type: Option<&'static str>,
    /// Main channel only.
    pub server_name: Option<String>,
    /// Main channel only.
    pub server_uuid: Option<String>,
}

impl Properties {
    /// The properties as a JSON object, or `None` while none is known.
    pub fn to_json(&self) -> Option<String> {
        let mut object = Map::new();
        let fields = [
            ("version", self.version.as_deref()),
            ("sessionId", self.session_id.as_deref()),
            ("channelType", self.channel_type),
            ("serverName", self.server_name.as_deref()),
            ("serverUUID", self.server_uuid.as_deref()),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                object.insert(key.to_string(), Value::String(value.to_string()));
            }
        }
        (!object.is_empty()).then(|| Value::Object(object).to_string())
    }
}

/// One tunnel's state; implements [`DiscriminatorSession`].
#[derive(Debug, Default)]
pub struct SpiceSession {
    denied: bool,
    /// Client bytes seen so far (saturating): the magic is checked on the first four.
    client_seen: usize,
    client: ClientStep,
    client_in: Input,
    server: ServerStep,
    server_in: Input,
    /// What the client's link message said, once decoded.
    link: Link,
    /// The server's common capabilities, from its link reply.
    server_caps: Caps,
    /// Server messages that arrived before the client's link message was decoded: their
    /// header format and meaning depend on it. Bounded by [`MAX_ITEM`].
    held: Vec<u8>,
    properties: Properties,
}

impl SpiceSession {
    /// A session that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The properties found so far.
    pub fn found(&self) -> &Properties {
        &self.properties
    }

    /// The answer for the bytes fed so far.
    pub fn verdict(&self) -> Verdict {
        if self.denied {
            Verdict::Denied
        } else if self.client_seen < parse::MAGIC.len() {
            Verdict::Undecided
        } else if self.complete() {
            Verdict::AffirmedComplete
        } else {
            Verdict::AffirmedIncomplete
        }
    }

    /// Bytes the session holds (capacity, to catch over-allocation too).
    pub fn buffered(&self) -> usize {
        self.client_in.partial.capacity() + self.server_in.partial.capacity() + self.held.capacity()
    }

    /// Whether every property this channel can have is known.
    fn complete(&self) -> bool {
        let Link::Known(mess) = &self.link else {
            return false;
        };
        if mess.channel_type != parse::CHANNEL_MAIN {
            return true;
        }
        let p = &self.properties;
        // A client without NAME_AND_UUID never gets a name or UUID: the session id is all.
        let named = (p.server_name.is_some() && p.server_uuid.is_some())
            || !mess.channel_caps.has(parse::MAIN_CAP_NAME_AND_UUID);
        p.session_id.is_some() && named
    }

    /// Denies unless the client's first bytes are (a prefix of) the magic.
    fn check_magic(&mut self, data: &[u8]) {
        let expected = parse::MAGIC.get(self.client_seen..).unwrap_or_default();
        let n = expected.len().min(data.len());
        if data.get(..n) != expected.get(..n) {
            self.denied = true;
        }
        self.client_seen = self.client_seen.saturating_add(data.len());
    }

    fn feed_client(&mut self, mut data: &[u8]) {
        loop {
            let next = match self.client {
                ClientStep::Header => {
                    match self.client_in.take(&mut data, parse::LINK_HEADER_LEN) {
                        Some(item) => self.on_client_header(&item),
                        None => return,
                    }
                }
                ClientStep::Mess { size } => match self.client_in.take(&mut data, size) {
                    Some(item) => self.on_link_mess(&item),
                    None => return,
                },
                ClientStep::Done => return,
            };
            self.client = next;
        }
    }

    fn on_client_header(&mut self, item: &[u8]) -> ClientStep {
        let Parsed::Done(header) = parse::link_header(item) else {
            return self.link_failed();
        };
        self.properties.version = Some(parse::version_string(header.major, header.minor));
        match usize::try_from(header.size) {
            Ok(size) if (parse::LINK_MESS_LEN..=MAX_ITEM).contains(&size) => {
                ClientStep::Mess { size }
            }
            _ => self.link_failed(),
        }
    }

    fn on_link_mess(&mut self, item: &[u8]) -> ClientStep {
        let size = u32::try_from(item.len()).unwrap_or(u32::MAX);
        let Parsed::Done(mess) = parse::link_mess(item, size) else {
            return self.link_failed();
        };
        self.properties.channel_type = Some(parse::channel_type_name(mess.channel_type));
        // The main channel's link carries no session yet: MAIN_INIT brings it.
        if mess.channel_type != parse::CHANNEL_MAIN {
            self.properties.session_id = Some(parse::hex(&mess.connection_id));
        }
        self.link = Link::Known(mess);
        let held = std::mem::take(&mut self.held);
        self.feed_server(&held);
        ClientStep::Done
    }

    /// The client's link cannot be read: nothing the server sends can be interpreted.
    fn link_failed(&mut self) -> ClientStep {
        self.link = Link::Failed;
        self.held = Vec::new();
        ClientStep::Done
    }

    fn feed_server(&mut self, mut data: &[u8]) {
        loop {
            if !self.server_in.pass_over(&mut data) {
                return;
            }
            let next = match self.server {
                ServerStep::Header => {
                    match self.server_in.take(&mut data, parse::LINK_HEADER_LEN) {
                        Some(item) => on_server_header(&item),
                        None => return,
                    }
                }
                ServerStep::Reply { size } => match self.server_in.take(&mut data, size) {
                    Some(item) => self.on_link_reply(&item),
                    None => return,
                },
                ServerStep::Result => {
                    match self.server_in.take(&mut data, parse::LINK_RESULT_LEN) {
                        Some(item) => on_link_result(&item),
                        None => return,
                    }
                }
                ServerStep::MessageHeader => match self.message_format() {
                    Format::Wait => {
                        self.hold(data);
                        return;
                    }
                    Format::Stop => ServerStep::Done,
                    Format::Mini(mini) => {
                        match self
                            .server_in
                            .take(&mut data, parse::message_header_len(mini))
                        {
                            Some(item) => self.on_message_header(&item, mini),
                            None => return,
                        }
                    }
                },
                ServerStep::Body { msg_type, size } => match self.server_in.take(&mut data, size) {
                    Some(item) => self.on_main_message(msg_type, &item),
                    None => return,
                },
                ServerStep::Done => return,
            };
            self.server = next;
        }
    }

    fn on_link_reply(&mut self, item: &[u8]) -> ServerStep {
        let size = u32::try_from(item.len()).unwrap_or(u32::MAX);
        match parse::link_reply(item, size) {
            Parsed::Done(reply) if reply.error == 0 => {
                self.server_caps = reply.common_caps;
                ServerStep::Result
            }
            _ => ServerStep::Done,
        }
    }

    /// How to read the server's messages, which depends on the client's link message.
    fn message_format(&self) -> Format {
        match &self.link {
            Link::Pending => Format::Wait,
            Link::Failed => Format::Stop,
            Link::Known(mess) if mess.channel_type != parse::CHANNEL_MAIN => Format::Stop,
            Link::Known(mess) => Format::Mini(
                mess.common_caps.has(parse::COMMON_CAP_MINI_HEADER)
                    && self.server_caps.has(parse::COMMON_CAP_MINI_HEADER),
            ),
        }
    }

    /// Keeps server bytes until the client's link message says how to read them.
    fn hold(&mut self, data: &[u8]) {
        if self.held.len().saturating_add(data.len()) > MAX_ITEM {
            self.held = Vec::new();
            self.server = ServerStep::Done;
            return;
        }
        self.held.extend_from_slice(data);
    }

    fn on_message_header(&mut self, item: &[u8], mini: bool) -> ServerStep {
        let Parsed::Done(header) = parse::message_header(item, mini) else {
            return ServerStep::Done;
        };
        let wanted = matches!(
            header.msg_type,
            parse::MSG_MAIN_INIT | parse::MSG_MAIN_NAME | parse::MSG_MAIN_UUID
        );
        match usize::try_from(header.size) {
            Ok(size) if wanted && size <= MAX_ITEM => ServerStep::Body {
                msg_type: header.msg_type,
                size,
            },
            _ => {
                self.server_in.skip = u64::from(header.size);
                ServerStep::MessageHeader
            }
        }
    }

    /// Records what a main channel message says; a malformed one is ignored.
    fn on_main_message(&mut self, msg_type: u16, body: &[u8]) -> ServerStep {
        let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let p = &mut self.properties;
        match msg_type {
            parse::MSG_MAIN_INIT => {
                if let Parsed::Done(id) = parse::main_init_session_id(body, size) {
                    p.session_id.get_or_insert_with(|| parse::hex(&id));
                }
            }
            parse::MSG_MAIN_NAME => {
                if let Parsed::Done(name) = parse::main_name(body, size) {
                    p.server_name.get_or_insert(name);
                }
            }
            parse::MSG_MAIN_UUID => {
                if let Parsed::Done(uuid) = parse::main_uuid(body, size) {
                    p.server_uuid
                        .get_or_insert_with(|| parse::uuid_string(&uuid));
                }
            }
            _ => {}
        }
        if self.complete() {
            ServerStep::Done
        } else {
            ServerStep::MessageHeader
        }
    }
}

impl DiscriminatorSession for SpiceSession {
    fn feed(&mut self, direction: Direction, data: &[u8]) -> Verdict {
        // The host stops feeding after a final verdict; later bytes change nothing.
        if !self.verdict().wants_more() || data.is_empty() {
            return self.verdict();
        }
        match direction {
            Direction::ClientToServer => {
                self.check_magic(data);
                if !self.denied {
                    self.feed_client(data);
                }
            }
            // A SPICE server stays silent until the client has linked: a server that speaks
            // before the client's magic is something else.
            Direction::ServerToClient if self.client_seen < parse::MAGIC.len() => {
                self.denied = true;
            }
            Direction::ServerToClient => self.feed_server(data),
        }
        self.verdict()
    }

    fn properties(&self) -> Option<String> {
        self.properties.to_json()
    }
}

// ---- the state machines ----

/// Where the client side is.
#[derive(Debug, Default, Clone, Copy)]
enum ClientStep {
    #[default]
    Header,
    Mess {
        size: usize,
    },
    Done,
}

/// Where the server side is.
#[derive(Debug, Default, Clone, Copy)]
enum ServerStep {
    #[default]
    Header,
    Reply {
        size: usize,
    },
    Result,
    MessageHeader,
    /// A main channel message the session reads.
    Body {
        msg_type: u16,
        size: usize,
    },
    Done,
}

/// What the client's link message said.
#[derive(Debug, Default)]
enum Link {
    #[default]
    Pending,
    Known(LinkMess),
    Failed,
}

/// How to read the server's data messages.
enum Format {
    /// Not known until the client's link message is decoded.
    Wait,
    /// Not worth reading (not the main channel, or an unreadable link).
    Stop,
    /// Mini headers when true, full headers otherwise.
    Mini(bool),
}

fn on_server_header(item: &[u8]) -> ServerStep {
    match parse::link_header(item) {
        Parsed::Done(header) => match usize::try_from(header.size) {
            Ok(size) if (parse::LINK_REPLY_LEN..=MAX_ITEM).contains(&size) => {
                ServerStep::Reply { size }
            }
            _ => ServerStep::Done,
        },
        _ => ServerStep::Done,
    }
}

fn on_link_result(item: &[u8]) -> ServerStep {
    // Anything but success (including a SASL exchange, which starts here) ends the reading.
    match parse::link_result(item) {
        Parsed::Done(0) => ServerStep::MessageHeader,
        _ => ServerStep::Done,
    }
}

/// One direction's bytes on their way to the decoders.
#[derive(Debug, Default)]
struct Input {
    /// The start of an item split across chunks; never longer than that item.
    partial: Vec<u8>,
    /// Bytes still to pass over: the rest of a message nobody reads.
    skip: u64,
}

impl Input {
    /// Drops skipped bytes from the front of `data`; true once nothing is left to skip.
    fn pass_over(&mut self, data: &mut &[u8]) -> bool {
        let n = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(data.len());
        *data = data.get(n..).unwrap_or_default();
        self.skip -= n as u64;
        self.skip == 0
    }

    /// The next `need` bytes as one item, once they have all arrived.
    fn take(&mut self, data: &mut &[u8], need: usize) -> Option<Vec<u8>> {
        let missing = need.saturating_sub(self.partial.len());
        let (now, rest) = data.split_at(missing.min(data.len()));
        *data = rest;
        // One allocation of the item's exact size, however small the chunks.
        if !now.is_empty() {
            self.partial.reserve_exact(missing);
        }
        self.partial.extend_from_slice(now);
        (self.partial.len() >= need).then(|| std::mem::take(&mut self.partial))
    }
}
