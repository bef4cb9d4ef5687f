//! Device state for snapshots: the JSON a device saves and is restored
//! from, and the functions that do it for any device, built-in or Python.

use pyo3::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::python::as_device;
use crate::error::{Error, Result};
use crate::state::pyjson;

/// What a device without state saves: an empty object.
pub fn no_state() -> Value {
    Value::Object(Default::default())
}

/// Accepts only what `no_state` gives (or None), for a device `name` that
/// keeps nothing: other content is another device's state.
pub fn expect_no_state(name: &str, state: &Value) -> Result<()> {
    match state {
        Value::Null => Ok(()),
        Value::Object(map) if map.is_empty() => Ok(()),
        _ => Err(Error::Argument(format!(
            "{name} keeps no state, but was given {state}"
        ))),
    }
}

/// A device's state struct as JSON.
pub fn to_state<T: Serialize>(name: &str, state: &T) -> Result<Value> {
    serde_json::to_value(state)
        .map_err(|e| Error::Device(format!("cannot save the state of {name}: {e}")))
}

/// A device's state struct from JSON, refusing anything else by name.
pub fn from_state<T: DeserializeOwned>(name: &str, state: &Value) -> Result<T> {
    T::deserialize(state).map_err(|e| Error::Argument(format!("not a {name} state: {e}")))
}

/// The state of `device`, built-in or Python, as a snapshot keeps it: a
/// JSON-compatible dict (a Python device's `snapshot()`, `{}` without one).
#[pyfunction]
pub fn save_device_state<'py>(device: &Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>> {
    let state = as_device(device)?.save_state()?;
    Ok(pyjson::to_python(device.py(), &state)?)
}

/// Puts `device` back in a state `save_device_state` returned.
#[pyfunction]
pub fn restore_device_state(device: &Bound<'_, PyAny>, state: &Bound<'_, PyAny>) -> Result<()> {
    let device = as_device(device)?;
    let state = pyjson::from_python(state, &format!("the state for {}", device.kind()))?;
    device.restore_state(&state)
}
