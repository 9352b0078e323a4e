//! DIMSE command sets (PS3.7 §9.3 and annex E): read from and written as implicit VR
//! little endian, whatever transfer syntax the presentation context negotiated, with
//! CommandGroupLength (0000,0000) first.
//!
//! [`Command`] is what we act on in a request; [`Response`] is what we answer (status,
//! optional ErrorComment, and whether an identifier data set follows, as in C-FIND's
//! pending responses).

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field (0000,0100) values we deal with.
pub mod field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    /// Set in every response's command field.
    pub const RESPONSE_BIT: u16 = 0x8000;
}

/// Status (0000,0900) values we send.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// C-FIND: a match follows in the identifier (PS3.4 C.4.1.1.4).
    pub const PENDING: u16 = 0xFF00;
    /// C-FIND: matching ended because of a C-CANCEL.
    pub const CANCEL: u16 = 0xFE00;
    /// PS3.7 C.5: the operation is not supported on this presentation context.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// PS3.7 C.5: the SOP class of the request is not the one of its presentation context.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// PS3.7 C.5: the SOP instance UID is missing or invalid.
    pub const INVALID_SOP_INSTANCE: u16 = 0x0117;
    /// PS3.7 C.5: a SOP instance with this UID exists (duplicate policy `reject`).
    pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
    /// PS3.7 C.5: a required command element is missing.
    pub const MISSING_ATTRIBUTE: u16 = 0x0120;
    /// PS3.4 B.2.3 / C.4.1.1.4: refused, out of resources (disk, index, size bound).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// PS3.4: data set / identifier does not match the SOP class.
    pub const DATA_SET_DOES_NOT_MATCH: u16 = 0xA900;
    /// PS3.4: cannot understand (the data set cannot be parsed).
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// PS3.4 B.2.3 warning "coercion of data elements": what is stored differs from what
    /// was sent. We answer it when an instance conflicts with a stored one and the first
    /// copy is kept, so the sender learns its data set is not what the archive holds.
    pub const WARNING_COERCION: u16 = 0xB000;

    /// Whether `status` ends a C-FIND (anything but pending).
    pub fn is_final(status: u16) -> bool {
        status != PENDING && status != 0xFF01
    }

    /// Whether `status` is a warning (PS3.7 C.4: 0001 or Bxxx): the operation was done.
    pub fn is_warning(status: u16) -> bool {
        status == 0x0001 || (0xB000..=0xBFFF).contains(&status)
    }
}

/// CommandDataSetType (0000,0800) value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;
/// CommandDataSetType value we send when a data set follows (any other value than
/// [`NO_DATA_SET`] means that; 0x0000 is customary).
pub const DATA_SET_FOLLOWS: u16 = 0x0000;
/// Priority (0000,0700) MEDIUM.
pub const PRIORITY_MEDIUM: u16 = 0x0000;

/// The parts of a received command set that we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Command Field (0000,0100).
    pub field: u16,
    /// Message ID (0000,0110); present in requests.
    pub message_id: Option<u16>,
    /// Affected SOP Class UID (0000,0002), without padding.
    pub affected_sop_class_uid: Option<String>,
    /// Whether a data set follows the command (CommandDataSetType != 0x0101).
    pub has_data_set: bool,
    /// Affected SOP Instance UID (0000,1000), without padding (C-STORE).
    pub affected_sop_instance_uid: Option<String>,
    /// Message ID Being Responded To (0000,0120) (C-CANCEL).
    pub message_id_being_responded_to: Option<u16>,
}

/// A command set that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("malformed command set: {0}")]
    Malformed(String),
    #[error("command set lacks a valid {0}")]
    Missing(&'static str),
    #[error("cannot encode command set: {0}")]
    Encode(String),
}

impl Command {
    /// Parses a complete command set (all command fragments joined).
    pub fn parse(bytes: &[u8]) -> Result<Command, CommandError> {
        let obj = read_command(bytes)?;
        let field =
            uint16(&obj, tags::COMMAND_FIELD).ok_or(CommandError::Missing("Command Field"))?;
        let data_set_type = uint16(&obj, tags::COMMAND_DATA_SET_TYPE)
            .ok_or(CommandError::Missing("Command Data Set Type"))?;
        Ok(Command {
            field,
            message_id: uint16(&obj, tags::MESSAGE_ID),
            affected_sop_class_uid: uid(&obj, tags::AFFECTED_SOP_CLASS_UID),
            has_data_set: data_set_type != NO_DATA_SET,
            affected_sop_instance_uid: uid(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
            message_id_being_responded_to: uint16(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO),
        })
    }

    pub fn is_request(&self) -> bool {
        self.field & field::RESPONSE_BIT == 0
    }
}

/// Encodes the response to `request` (a request with a Message ID) with `status` and no
/// data set.
pub fn encode_response(request: &Command, status: u16) -> Result<Vec<u8>, CommandError> {
    Response::new(status).encode(request)
}

/// ErrorComment (0000,0902) is LO: at most 64 characters.
pub const MAX_ERROR_COMMENT: usize = 64;

/// A response to a request: its status, an optional ErrorComment, and whether an
/// identifier data set follows (C-FIND pending responses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub error_comment: Option<String>,
    pub has_data_set: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            error_comment: None,
            has_data_set: false,
        }
    }

    /// With an ErrorComment, cut to [`MAX_ERROR_COMMENT`] characters and stripped of
    /// backslashes (LO's value delimiter) and control characters.
    pub fn with_comment(status: u16, comment: &str) -> Response {
        let cleaned: String = comment
            .chars()
            .map(|c| if c == '\\' || c.is_control() { ' ' } else { c })
            .take(MAX_ERROR_COMMENT)
            .collect();
        Response {
            status,
            error_comment: Some(cleaned.trim_end().to_owned()),
            has_data_set: false,
        }
    }

    /// Encodes this response to `request`; the SOP class and (for C-STORE) instance UIDs
    /// are echoed from the request.
    pub fn encode(&self, request: &Command) -> Result<Vec<u8>, CommandError> {
        let message_id = request
            .message_id
            .ok_or(CommandError::Missing("Message ID"))?;
        let data_set_type = if self.has_data_set {
            // Any value other than 0x0101 means "a data set follows"; 0x0000 is customary.
            0x0000
        } else {
            NO_DATA_SET
        };
        let mut elements = vec![
            DataElement::new(
                tags::COMMAND_FIELD,
                VR::US,
                PrimitiveValue::from(request.field | field::RESPONSE_BIT),
            ),
            DataElement::new(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                VR::US,
                PrimitiveValue::from(message_id),
            ),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(data_set_type),
            ),
            DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(self.status)),
        ];
        if let Some(uid) = &request.affected_sop_class_uid {
            elements.push(DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(pad_uid(uid)),
            ));
        }
        if let Some(uid) = &request.affected_sop_instance_uid {
            elements.push(DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(pad_uid(uid)),
            ));
        }
        if let Some(comment) = &self.error_comment {
            let mut text = comment.clone();
            if text.len() % 2 == 1 {
                text.push(' ');
            }
            elements.push(DataElement::new(
                tags::ERROR_COMMENT,
                VR::LO,
                PrimitiveValue::from(text),
            ));
        }
        write_command(elements)
    }
}

/// Encodes a C-STORE-RQ (PS3.7 §9.3.1.1) for the data set that follows it, at medium
/// priority (used by [`crate::results::forward`], our C-STORE SCU).
pub(crate) fn encode_store_request(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<Vec<u8>, CommandError> {
    write_command(vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(pad_uid(sop_class_uid)),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(field::C_STORE_RQ),
        ),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(
            tags::PRIORITY,
            VR::US,
            PrimitiveValue::from(PRIORITY_MEDIUM),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(DATA_SET_FOLLOWS),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(pad_uid(sop_instance_uid)),
        ),
    ])
}

/// The parts of a C-STORE-RSP (PS3.7 §9.3.1.2) that a C-STORE SCU acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreResponse {
    /// Message ID Being Responded To (0000,0120).
    pub message_id_being_responded_to: u16,
    /// Status (0000,0900).
    pub status: u16,
    /// Affected SOP Instance UID (0000,1000), without padding, when present.
    pub affected_sop_instance_uid: Option<String>,
    /// ErrorComment (0000,0902), trimmed, when present.
    pub error_comment: Option<String>,
}

impl StoreResponse {
    /// Parses a complete command set that must be a C-STORE-RSP without a data set.
    pub(crate) fn parse(bytes: &[u8]) -> Result<StoreResponse, CommandError> {
        let obj = read_command(bytes)?;
        let command_field =
            uint16(&obj, tags::COMMAND_FIELD).ok_or(CommandError::Missing("Command Field"))?;
        if command_field != field::C_STORE_RSP {
            return Err(CommandError::Malformed(format!(
                "expected a C-STORE-RSP, got command field {command_field:#06x}"
            )));
        }
        if uint16(&obj, tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET) {
            return Err(CommandError::Malformed(
                "C-STORE-RSP announces a data set".to_owned(),
            ));
        }
        Ok(StoreResponse {
            message_id_being_responded_to: uint16(&obj, tags::MESSAGE_ID_BEING_RESPONDED_TO)
                .ok_or(CommandError::Missing("Message ID Being Responded To"))?,
            status: uint16(&obj, tags::STATUS).ok_or(CommandError::Missing("Status"))?,
            affected_sop_instance_uid: uid(&obj, tags::AFFECTED_SOP_INSTANCE_UID),
            error_comment: obj
                .element(tags::ERROR_COMMENT)
                .ok()
                .and_then(|e| e.to_str().ok())
                .map(|text| text.trim_end_matches(['\0', ' ']).to_owned()),
        })
    }
}

/// Reads a command set: implicit VR little endian, whatever the presentation context.
fn read_command(bytes: &[u8]) -> Result<InMemDicomObject, CommandError> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    InMemDicomObject::read_dataset_with_ts(bytes, &ts)
        .map_err(|e| CommandError::Malformed(e.to_string()))
}

/// An unsigned short command element, when present and valid.
fn uint16(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.element(tag).ok().and_then(|e| e.to_int::<u16>().ok())
}

/// A UID command element without its padding, when present.
fn uid(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|uid| uid.trim_end_matches(['\0', ' ']).to_owned())
}

/// Writes `elements` as a command set, CommandGroupLength first.
fn write_command(elements: Vec<DataElement<InMemDicomObject>>) -> Result<Vec<u8>, CommandError> {
    let mut bytes = Vec::with_capacity(160);
    InMemDicomObject::command_from_element_iter(elements)
        .write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| CommandError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// UIDs are padded to even length with one NUL (PS3.5 §9.1).
fn pad_uid(uid: &str) -> String {
    let mut padded = uid.to_owned();
    if padded.len() % 2 == 1 {
        padded.push('\0');
    }
    padded
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::uids;

    /// A C-ECHO-RQ as echoscu sends it.
    fn echo_rq(message_id: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        InMemDicomObject::command_from_element_iter([
            DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(pad_uid(uids::VERIFICATION)),
            ),
            DataElement::new(
                tags::COMMAND_FIELD,
                VR::US,
                PrimitiveValue::from(field::C_ECHO_RQ),
            ),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(NO_DATA_SET),
            ),
        ])
        .write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .unwrap();
        bytes
    }

    #[test]
    fn parses_an_echo_request() {
        let cmd = Command::parse(&echo_rq(7)).unwrap();
        assert_eq!(
            cmd,
            Command {
                field: field::C_ECHO_RQ,
                message_id: Some(7),
                affected_sop_class_uid: Some(uids::VERIFICATION.to_owned()),
                has_data_set: false,
                affected_sop_instance_uid: None,
                message_id_being_responded_to: None,
            }
        );
        assert!(cmd.is_request());
    }

    #[test]
    fn echo_response_is_well_formed() {
        let request = Command::parse(&echo_rq(7)).unwrap();
        let bytes = encode_response(&request, status::SUCCESS).unwrap();

        // Implicit VR LE: (0000,0000) tag, length 4, then the group length value.
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let group_length = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        assert_eq!(group_length as usize, bytes.len() - 12);
        assert_eq!(bytes.len() % 2, 0);

        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts).unwrap();
        let u16_of = |tag| obj.element(tag).unwrap().to_int::<u16>().unwrap();
        assert_eq!(u16_of(tags::COMMAND_FIELD), field::C_ECHO_RSP);
        assert_eq!(u16_of(tags::MESSAGE_ID_BEING_RESPONDED_TO), 7);
        assert_eq!(u16_of(tags::COMMAND_DATA_SET_TYPE), NO_DATA_SET);
        assert_eq!(u16_of(tags::STATUS), status::SUCCESS);
        let uid = obj
            .element(tags::AFFECTED_SOP_CLASS_UID)
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(uid.trim_end_matches('\0'), uids::VERIFICATION);
    }

    #[test]
    fn rejects_garbage_and_incomplete_commands() {
        assert!(Command::parse(&[0xde, 0xad, 0xbe]).is_err());
        assert!(Command::parse(&[0xff; 64]).is_err());
        // a valid data set without a command field
        let mut bytes = Vec::new();
        InMemDicomObject::command_from_element_iter([DataElement::new(
            tags::MESSAGE_ID,
            VR::US,
            PrimitiveValue::from(1u16),
        )])
        .write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .unwrap();
        assert!(matches!(
            Command::parse(&bytes),
            Err(CommandError::Missing("Command Field"))
        ));
    }

    #[test]
    fn responses_carry_an_error_comment_and_the_instance_uid() {
        let mut request = Command::parse(&echo_rq(3)).unwrap();
        request.field = field::C_STORE_RQ;
        request.affected_sop_instance_uid = Some("1.2.3".to_owned());
        let long = format!("bad\\thing\n{}", "x".repeat(100));
        let bytes = Response::with_comment(status::CANNOT_UNDERSTAND, &long)
            .encode(&request)
            .unwrap();
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts).unwrap();
        let text = |tag| obj.element(tag).unwrap().to_str().unwrap().into_owned();
        let comment = text(tags::ERROR_COMMENT);
        assert_eq!(comment.trim_end().chars().count(), MAX_ERROR_COMMENT);
        assert!(comment.starts_with("bad thing "), "{comment:?}");
        assert_eq!(
            text(tags::AFFECTED_SOP_INSTANCE_UID).trim_end_matches('\0'),
            "1.2.3"
        );
        let u16_of = |tag| obj.element(tag).unwrap().to_int::<u16>().unwrap();
        assert_eq!(u16_of(tags::COMMAND_FIELD), field::C_STORE_RSP);
        assert_eq!(u16_of(tags::STATUS), status::CANNOT_UNDERSTAND);
        assert_eq!(u16_of(tags::COMMAND_DATA_SET_TYPE), NO_DATA_SET);

        let pending = Response {
            has_data_set: true,
            ..Response::new(status::PENDING)
        };
        let bytes = pending.encode(&request).unwrap();
        let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts).unwrap();
        let data_set_type = obj.element(tags::COMMAND_DATA_SET_TYPE).unwrap();
        assert_ne!(data_set_type.to_int::<u16>().unwrap(), NO_DATA_SET);
        assert!(obj.element(tags::ERROR_COMMENT).is_err());
        assert!(!status::is_final(status::PENDING));
        assert!(status::is_final(status::CANCEL));
    }

    #[test]
    fn a_response_needs_a_message_id() {
        let mut request = Command::parse(&echo_rq(1)).unwrap();
        request.message_id = None;
        assert!(encode_response(&request, status::SUCCESS).is_err());
    }
}
