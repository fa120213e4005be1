//! Per-flow application behaviour (`action_application`).
//!
//! An entry stores a one-byte [`AppId`]; the worker's [`AppRegistry`] maps it
//! to a [`FlowApp`] that runs on every packet of the flow. The registry is
//! per worker, like the table, so apps need no locks.

use super::FlowEntry;
use std::any::Any;

/// Index of an app in an [`AppRegistry`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(pub u8);

impl AppId {
    /// No application: the packet path skips the call altogether.
    pub const NONE: Self = Self(0);
    /// The built-in [`CountApp`].
    pub const COUNT: Self = Self(1);
    /// The built-in [`DropApp`].
    pub const DROP: Self = Self(2);
}

/// What an app wants done with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppVerdict {
    /// Go on with the network action.
    Continue,
    /// Drop the packet.
    Drop,
}

/// Behaviour attached to flows. Runs on the packet path: it must not block and
/// should not allocate.
pub trait FlowApp: Any + Send + std::fmt::Debug {
    /// A unique name (configs refer to apps by it).
    fn name(&self) -> &'static str;

    /// Called for each packet of a flow using this app, after the entry's
    /// counters were updated and before its network action is applied.
    fn on_packet(&mut self, entry: &FlowEntry, frame: &mut [u8]) -> AppVerdict;
}

/// The `none` app: does nothing (and is never called, see [`AppRegistry::run`]).
#[derive(Debug, Default)]
pub struct NoApp;

impl FlowApp for NoApp {
    fn name(&self) -> &'static str {
        "none"
    }
    fn on_packet(&mut self, _entry: &FlowEntry, _frame: &mut [u8]) -> AppVerdict {
        AppVerdict::Continue
    }
}

/// The `count` app: totals the packets and bytes of all flows that use it.
#[derive(Debug, Default)]
pub struct CountApp {
    packets: u64,
    bytes: u64,
}

impl CountApp {
    /// Packets seen.
    pub fn packets(&self) -> u64 {
        self.packets
    }
    /// Bytes seen (frame lengths).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl FlowApp for CountApp {
    fn name(&self) -> &'static str {
        "count"
    }
    fn on_packet(&mut self, _entry: &FlowEntry, frame: &mut [u8]) -> AppVerdict {
        self.packets += 1;
        self.bytes += frame.len() as u64;
        AppVerdict::Continue
    }
}

/// The `drop` app: drops every packet (a per-flow block).
#[derive(Debug, Default)]
pub struct DropApp;

impl FlowApp for DropApp {
    fn name(&self) -> &'static str {
        "drop"
    }
    fn on_packet(&mut self, _entry: &FlowEntry, _frame: &mut [u8]) -> AppVerdict {
        AppVerdict::Drop
    }
}

/// Why an app cannot be registered or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// All 256 ids are taken.
    #[error("no free app id for {name}: all 256 are taken")]
    Full {
        /// The app that did not fit.
        name: &'static str,
    },
    /// The name is already registered.
    #[error("an app named {name} is already registered as {id:?}")]
    DuplicateName {
        /// The name.
        name: &'static str,
        /// The id it has.
        id: AppId,
    },
    /// An entry refers to an id nothing is registered under (for example one
    /// imported from a node that runs more apps).
    #[error("no app is registered as {id:?}")]
    Unknown {
        /// The id.
        id: AppId,
    },
}

/// The apps of one worker, indexed by [`AppId`]. Built-ins take ids 0..=2.
#[derive(Debug)]
pub struct AppRegistry {
    apps: Vec<Box<dyn FlowApp>>,
}

impl Default for AppRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl AppRegistry {
    /// A registry with the built-ins [`NoApp`], [`CountApp`] and [`DropApp`]
    /// at [`AppId::NONE`], [`AppId::COUNT`] and [`AppId::DROP`].
    pub fn new() -> Self {
        Self {
            apps: vec![Box::new(NoApp), Box::new(CountApp::default()), Box::new(DropApp)],
        }
    }

    /// Adds an app and returns its id.
    pub fn register(&mut self, app: Box<dyn FlowApp>) -> Result<AppId, AppError> {
        let name = app.name();
        if let Some(id) = self.id_of(name) {
            return Err(AppError::DuplicateName { name, id });
        }
        let id = u8::try_from(self.apps.len()).map_err(|_| AppError::Full { name })?;
        self.apps.push(app);
        Ok(AppId(id))
    }

    /// The id of the app called `name`.
    pub fn id_of(&self, name: &str) -> Option<AppId> {
        self.apps.iter().position(|a| a.name() == name).map(|i| AppId(i as u8))
    }

    /// The app at `id` as its concrete type, to read its state.
    pub fn get<T: FlowApp>(&self, id: AppId) -> Option<&T> {
        let app: &dyn Any = self.apps.get(id.0 as usize)?.as_ref();
        app.downcast_ref()
    }

    /// Runs the entry's app on a packet. [`AppId::NONE`] returns
    /// [`AppVerdict::Continue`] without a virtual call.
    pub fn run(&mut self, entry: &FlowEntry, frame: &mut [u8]) -> Result<AppVerdict, AppError> {
        if entry.app == AppId::NONE {
            return Ok(AppVerdict::Continue);
        }
        let app = self
            .apps
            .get_mut(entry.app.0 as usize)
            .ok_or(AppError::Unknown { id: entry.app })?;
        Ok(app.on_packet(entry, frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Direction, NetworkAction, Owner, Timestamp};
    use handoff_common::flow_key::FlowKey;

    fn entry(app: AppId) -> FlowEntry {
        FlowEntry::new(
            FlowKey::default(),
            Direction::Forward,
            NetworkAction::Forward { next_hop: 0 },
            app,
            Owner::default(),
            Timestamp::default(),
        )
    }

    #[derive(Debug)]
    struct Marker(&'static str);

    impl FlowApp for Marker {
        fn name(&self) -> &'static str {
            self.0
        }
        fn on_packet(&mut self, _entry: &FlowEntry, frame: &mut [u8]) -> AppVerdict {
            frame[0] = 0xaa;
            AppVerdict::Continue
        }
    }

    #[test]
    fn builtins_count_drop_and_continue() {
        let mut apps = AppRegistry::new();
        let mut frame = [0u8; 60];
        assert_eq!(apps.run(&entry(AppId::NONE), &mut frame), Ok(AppVerdict::Continue));
        assert_eq!(apps.run(&entry(AppId::COUNT), &mut frame), Ok(AppVerdict::Continue));
        assert_eq!(
            apps.run(&entry(AppId::COUNT), &mut frame[..20]),
            Ok(AppVerdict::Continue)
        );
        assert_eq!(apps.run(&entry(AppId::DROP), &mut frame), Ok(AppVerdict::Drop));
        let count = apps.get::<CountApp>(AppId::COUNT).unwrap();
        assert_eq!((count.packets(), count.bytes()), (2, 80));
        assert!(apps.get::<CountApp>(AppId::DROP).is_none());
        assert_eq!(apps.id_of("drop"), Some(AppId::DROP));
    }

    #[test]
    fn registered_apps_run_and_unknown_ids_are_errors() {
        let mut apps = AppRegistry::new();
        let id = apps.register(Box::new(Marker("mark"))).unwrap();
        assert_eq!(id, AppId(3));
        let mut frame = [0u8; 4];
        assert_eq!(apps.run(&entry(id), &mut frame), Ok(AppVerdict::Continue));
        assert_eq!(frame[0], 0xaa);
        assert_eq!(
            apps.register(Box::new(Marker("mark"))),
            Err(AppError::DuplicateName { name: "mark", id })
        );
        assert_eq!(
            apps.run(&entry(AppId(9)), &mut frame),
            Err(AppError::Unknown { id: AppId(9) })
        );
    }

    #[test]
    fn the_id_space_is_bounded() {
        let mut apps = AppRegistry::new();
        let names: Vec<&'static str> = (3..=256)
            .map(|i| &*Box::leak(format!("app{i}").into_boxed_str()))
            .collect();
        for &name in &names[..253] {
            apps.register(Box::new(Marker(name))).unwrap();
        }
        assert_eq!(
            apps.register(Box::new(Marker(names[253]))),
            Err(AppError::Full { name: names[253] })
        );
    }
}
