//! Shedding under MQTT congestion: an event the gateway acknowledged to a device is
//! never dropped afterwards for lack of broker capacity, so while the driver says its
//! broker connections are congested (`Input::MqttCongested`), and once it acknowledged
//! as many of these as the room the driver gave at the end of the last loop turn
//! (`Input::MqttRoom`: what the connections take before their high watermark, so a turn
//! that reads a large batch of datagrams cannot overshoot the buffer), the core refuses,
//! before acknowledging, what would publish:
//!
//! | input | while congested |
//! |---|---|
//! | Register, Update | 5.03 Service Unavailable with Max-Age [`SHED_MAX_AGE_S`] |
//! | Send (`POST /dp`) | the same |
//! | CON notification | not acknowledged, not published: the device retransmits it |
//! | NON notification | dropped |
//!
//! Each is counted by kind (`CoreStats::shed`). De-registrations, responses to the
//! gateway's own requests, expiries and the management API's removals are not shed:
//! they are bounded by what the gateway itself started, and the driver's buffer keeps
//! room above its high watermark for them.

/// The Max-Age of a 5.03 for a shed request: when the device may try again.
pub const SHED_MAX_AGE_S: u32 = 5;

/// What was shed (an index into `CoreStats::shed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    Register,
    Update,
    Send,
    Notification,
}

impl Shed {
    pub const ALL: [Shed; 4] = [Self::Register, Self::Update, Self::Send, Self::Notification];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The `what` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Update => "update",
            Self::Send => "send",
            Self::Notification => "notification",
        }
    }
}
