//! JSON values to Python objects and back, for device state: a device's
//! state must be what a snapshot can write as JSON.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// `value` as plain Python objects: dict, list, str, int, float, bool, None.
pub fn to_python<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => number_to_python(py, n)?,
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let items = items
                .iter()
                .map(|item| to_python(py, item))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, to_python(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

fn number_to_python<'py>(py: Python<'py>, n: &Number) -> PyResult<Bound<'py, PyAny>> {
    if let Some(u) = n.as_u64() {
        return Ok(u.into_pyobject(py)?.into_any());
    }
    if let Some(i) = n.as_i64() {
        return Ok(i.into_pyobject(py)?.into_any());
    }
    Ok(PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any())
}

/// A JSON-compatible Python object as a JSON value; `what` names it in the
/// error for anything else.
pub fn from_python(object: &Bound<'_, PyAny>, what: &str) -> Result<Value> {
    convert(object)
        .map_err(|problem| Error::Argument(format!("{what} must be JSON-compatible: {problem}")))
}

fn convert(object: &Bound<'_, PyAny>) -> std::result::Result<Value, String> {
    if object.is_none() {
        Ok(Value::Null)
    } else if let Ok(b) = object.cast::<PyBool>() {
        Ok(Value::Bool(b.is_true()))
    } else if object.is_instance_of::<PyInt>() {
        integer(object)
    } else if let Ok(f) = object.cast::<PyFloat>() {
        Number::from_f64(f.value())
            .map(Value::Number)
            .ok_or_else(|| format!("{} is not a finite number", f.value()))
    } else if let Ok(s) = object.cast::<PyString>() {
        Ok(Value::String(s.to_string()))
    } else if object.is_instance_of::<PyList>() || object.is_instance_of::<PyTuple>() {
        let items = object.try_iter().map_err(|e| e.to_string())?;
        items
            .map(|item| convert(&item.map_err(|e| e.to_string())?))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Value::Array)
    } else if let Ok(dict) = object.cast::<PyDict>() {
        object_of(dict)
    } else {
        let type_name = object
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        Err(format!(
            "a {type_name} is not (use dict, list, str, int, float, bool or None)"
        ))
    }
}

fn integer(object: &Bound<'_, PyAny>) -> std::result::Result<Value, String> {
    if let Ok(u) = object.extract::<u64>() {
        return Ok(Value::from(u));
    }
    object
        .extract::<i64>()
        .map(Value::from)
        .map_err(|_| format!("{object} does not fit in 64 bits"))
}

fn object_of(dict: &Bound<'_, PyDict>) -> std::result::Result<Value, String> {
    let mut map = Map::new();
    for (key, item) in dict.iter() {
        let key = key
            .cast::<PyString>()
            .map_err(|_| format!("dict key {key} is not a str"))?
            .to_string();
        map.insert(key, convert(&item)?);
    }
    Ok(Value::Object(map))
}
