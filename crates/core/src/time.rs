//! Timestamps on the wire: RFC 3339, UTC, microseconds, `+00:00` (e.g. `2018-12-04T17:25:52.482514+00:00`).

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A point in time as IMS records carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to microseconds (the precision the wire format carries).
    pub fn now() -> Self {
        let now = Utc::now();
        let micros = now.timestamp_micros();
        Timestamp(DateTime::from_timestamp_micros(micros).unwrap_or(now))
    }

    /// Parses the formats found in IMS data: RFC 3339 with an offset (normalised to UTC) or the
    /// original service's naive `isoformat()` values (`2025-04-28T14:03:11[.123456]`), read as UTC.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
            return Some(Timestamp(dt.with_timezone(&Utc)));
        }
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
                return Some(Timestamp(n.and_utc()));
            }
        }
        None
    }

    /// The wire form: `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`.
    pub fn to_wire(&self) -> String {
        self.0
            .to_rfc3339_opts(SecondsFormat::Micros, false)
            .replace('Z', "+00:00")
    }

    /// The form the original writes inside a deleted manifest's `created` (`%Y-%m-%d %H:%M:%S`).
    pub fn to_manifest_form(&self) -> String {
        self.0.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_wire())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_wire())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not a valid datetime: {s:?}")))
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            )))
            .examples(["2018-12-04T17:25:52.482514+00:00"])
            .into()
    }
}
impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_has_micros_and_offset() {
        let t = Timestamp::parse("2018-12-04T17:25:52Z").unwrap();
        assert_eq!(t.to_wire(), "2018-12-04T17:25:52.000000+00:00");
        let t = Timestamp::parse("2018-12-04T18:25:52.482514+01:00").unwrap();
        assert_eq!(t.to_wire(), "2018-12-04T17:25:52.482514+00:00");
    }

    #[test]
    fn naive_original_values_are_utc() {
        let t = Timestamp::parse("2025-04-28T14:03:11").unwrap();
        assert_eq!(t.to_wire(), "2025-04-28T14:03:11.000000+00:00");
        let t = Timestamp::parse("2025-04-28T14:03:11.5").unwrap();
        assert_eq!(t.to_wire(), "2025-04-28T14:03:11.500000+00:00");
        assert!(Timestamp::parse("yesterday").is_none());
    }

    #[test]
    fn now_is_microsecond_precise() {
        let t = Timestamp::now();
        assert_eq!(Timestamp::parse(&t.to_wire()), Some(t));
    }
}
