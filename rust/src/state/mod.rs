//! Saving and restoring what KVM holds for a VM and its vCPUs, in a
//! documented, versioned JSON form that snapshots build on.
//!
//! A state document is `{"format": NAME, "version": N, "state": {...}}`.
//! Kernel structs inside it (`kvm_regs`, `kvm_sregs`, `kvm_lapic_state`, ...)
//! are arrays of their bytes in the kernel's x86-64 layout (<asm/kvm.h>), as
//! kvm-bindings serializes them; the rest are named fields. A reader refuses
//! another format name or version: a change to the layout bumps the version.

mod host;
pub mod msrs;
pub mod pyjson;
pub mod python;
pub mod vcpu;
pub mod vm;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// The version of every state document this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Which document a JSON text holds, read before the state itself so a
/// mismatch is named as such rather than as a missing field.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document<T> {
    format: String,
    version: u32,
    state: T,
}

/// None where KVM refuses with `absent`, its answer for a part the VM was
/// created without (the in-kernel irqchip and local APICs, the PIT).
fn unless_absent<T>(
    result: std::result::Result<T, kvm_ioctls::Error>,
    op: &'static str,
    absent: i32,
) -> Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.errno() == absent => Ok(None),
        Err(source) => Err(Error::Kvm { op, source }),
    }
}

/// Maps KVM's refusal `absent` to restore a part the VM lacks onto an error
/// that says how to add it.
fn needs_part(
    op: &'static str,
    absent: i32,
    create: &'static str,
) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| {
        if source.errno() == absent {
            Error::Argument(format!(
                "{op} refused: the state has a part this VM was created without; \
                 call {create} before restoring"
            ))
        } else {
            Error::Kvm { op, source }
        }
    }
}

/// `state` as a document of format `format`.
pub fn to_json<T: Serialize>(format: &str, state: &T) -> Result<String> {
    serde_json::to_string(&document_of(format, state))
        .map_err(|e| Error::Argument(format!("cannot write the {format} as JSON: {e}")))
}

/// `state` as a document of format `format`, a JSON value.
pub fn to_document<T: Serialize>(format: &str, state: &T) -> Result<Value> {
    serde_json::to_value(document_of(format, state))
        .map_err(|e| Error::Argument(format!("cannot write the {format} as JSON: {e}")))
}

fn document_of<'a, T>(format: &str, state: &'a T) -> Document<&'a T> {
    Document {
        format: format.to_owned(),
        version: FORMAT_VERSION,
        state,
    }
}

/// The state in a JSON text of format `format` and this build's version.
pub fn from_json<T: DeserializeOwned>(format: &str, json: &str) -> Result<T> {
    from_document(format, serde_json::from_str(json).map_err(invalid(format))?)
}

/// The state in a document (a JSON value) of format `format` and this
/// build's version.
pub fn from_document<T: DeserializeOwned>(format: &str, document: Value) -> Result<T> {
    let header = Header::deserialize(&document).map_err(invalid(format))?;
    if header.format != format {
        return Err(Error::Argument(format!(
            "this is a {:?} document, not a {format}",
            header.format
        )));
    }
    if header.version != FORMAT_VERSION {
        return Err(Error::Argument(format!(
            "this {format} is in format version {}; this pyfastvm reads version {FORMAT_VERSION} only",
            header.version
        )));
    }
    let document: Document<T> = serde_json::from_value(document).map_err(invalid(format))?;
    Ok(document.state)
}

fn invalid(format: &str) -> impl Fn(serde_json::Error) -> Error + '_ {
    move |e| Error::Argument(format!("not a valid {format} document: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        count: u64,
    }

    #[test]
    fn a_document_round_trips() {
        let json = to_json("Sample", &Sample { count: 7 }).unwrap();
        assert_eq!(
            json,
            r#"{"format":"Sample","version":1,"state":{"count":7}}"#
        );
        assert_eq!(
            from_json::<Sample>("Sample", &json).unwrap(),
            Sample { count: 7 }
        );
    }

    fn refusal(json: &str) -> String {
        from_json::<Sample>("Sample", json).unwrap_err().to_string()
    }

    #[test]
    fn another_version_or_format_is_refused_by_name() {
        let v2 = r#"{"format":"Sample","version":2,"state":{"count":7}}"#;
        assert!(refusal(v2).contains("format version 2"), "{}", refusal(v2));
        let other = r#"{"format":"Other","version":1,"state":{"count":7}}"#;
        assert!(refusal(other).contains(r#""Other" document"#));
    }

    #[test]
    fn truncated_or_unknown_content_is_refused() {
        let json = to_json("Sample", &Sample { count: 7 }).unwrap();
        assert!(refusal(&json[..json.len() - 3]).contains("not a valid Sample document"));
        let extra = r#"{"format":"Sample","version":1,"state":{"count":7,"x":1}}"#;
        assert!(refusal(extra).contains("unknown field"));
    }
}
