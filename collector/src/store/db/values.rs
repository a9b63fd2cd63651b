//! Parameters and columns: what the store passes to either backend and reads back.

use super::*;

/// A parameter value. Integers travel as 64-bit on both backends (every integer column is 64-bit).
#[derive(Debug, Clone, Copy)]
pub enum P<'a> {
    /// NULL.
    Null,
    /// An integer.
    I(i64),
    /// A float.
    F(f64),
    /// Text.
    T(&'a str),
    /// Bytes.
    B(&'a [u8]),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for P<'_> {
            fn from(v: $t) -> Self {
                P::I(i64::from(v))
            }
        }
    )*};
}
from_int!(i64, i32, u32, u16, u8, bool);

impl From<u64> for P<'_> {
    /// Values above `i64::MAX` (never produced by the agent) are clamped rather than wrapped.
    fn from(v: u64) -> Self {
        P::I(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for P<'_> {
    fn from(v: usize) -> Self {
        P::I(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for P<'_> {
    fn from(v: f64) -> Self {
        P::F(v)
    }
}
impl<'a> From<&'a str> for P<'a> {
    fn from(v: &'a str) -> Self {
        P::T(v)
    }
}
impl<'a> From<&'a String> for P<'a> {
    fn from(v: &'a String) -> Self {
        P::T(v)
    }
}
impl<'a> From<&'a [u8]> for P<'a> {
    fn from(v: &'a [u8]) -> Self {
        P::B(v)
    }
}
impl<'a> From<&'a Vec<u8>> for P<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        P::B(v)
    }
}
impl<'a, const N: usize> From<&'a [u8; N]> for P<'a> {
    fn from(v: &'a [u8; N]) -> Self {
        P::B(v)
    }
}
impl<'a> From<&'a Option<String>> for P<'a> {
    fn from(v: &'a Option<String>) -> Self {
        v.as_deref().map_or(P::Null, P::T)
    }
}
impl<'a, T: Into<P<'a>>> From<Option<T>> for P<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(P::Null, Into::into)
    }
}

/// Parameters for a statement: `params![a, b, c]`.
macro_rules! params {
    () => { &[] as &[$crate::store::db::P<'_>] };
    ($($e:expr),+ $(,)?) => { &[$($crate::store::db::P::from($e)),+] as &[$crate::store::db::P<'_>] };
}
pub(crate) use params;

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            P::Null => ValueRef::Null,
            P::I(v) => ValueRef::Integer(v),
            P::F(v) => ValueRef::Real(v),
            P::T(v) => ValueRef::Text(v.as_bytes()),
            P::B(v) => ValueRef::Blob(v),
        }))
    }
}

impl ToSql for P<'_> {
    /// Encodes for the type the server inferred, so `?1` works against BIGINT, INTEGER, BOOLEAN or
    /// DOUBLE PRECISION alike.
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            P::Null => Ok(IsNull::Yes),
            P::I(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(v)?.to_sql(ty, out),
                Type::BOOL => (v != 0).to_sql(ty, out),
                Type::FLOAT8 => (v as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().as_str().to_sql(ty, out),
                _ => Err(format!("an integer cannot be sent as {ty}").into()),
            },
            P::F(v) => match *ty {
                Type::FLOAT8 => v.to_sql(ty, out),
                Type::FLOAT4 => (v as f32).to_sql(ty, out),
                _ => Err(format!("a float cannot be sent as {ty}").into()),
            },
            P::T(v) => match *ty {
                Type::JSONB => {
                    // jsonb's binary form: a version byte, then the text.
                    out.extend_from_slice(&[1]);
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                Type::JSON | Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
                    out.extend_from_slice(v.as_bytes());
                    Ok(IsNull::No)
                }
                _ => Err(format!("text cannot be sent as {ty}").into()),
            },
            P::B(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// A parameter kept until a pipelined write is sent.
#[derive(Debug, Clone)]
pub(super) enum Owned {
    Null,
    I(i64),
    F(f64),
    T(String),
    B(Vec<u8>),
}

impl Owned {
    pub(super) fn of(p: &P<'_>) -> Owned {
        match *p {
            P::Null => Owned::Null,
            P::I(v) => Owned::I(v),
            P::F(v) => Owned::F(v),
            P::T(v) => Owned::T(v.to_string()),
            P::B(v) => Owned::B(v.to_vec()),
        }
    }

    pub(super) fn borrow(&self) -> P<'_> {
        match self {
            Owned::Null => P::Null,
            Owned::I(v) => P::I(*v),
            Owned::F(v) => P::F(*v),
            Owned::T(v) => P::T(v),
            Owned::B(v) => P::B(v),
        }
    }
}

/// A value read from a row.
pub trait FromCol: Sized {
    /// From a SQLite row.
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError>;
    /// From a PostgreSQL row.
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError>;
}

pub(super) fn pg_int(r: &tokio_postgres::Row, i: usize) -> Result<Option<i64>, DbError> {
    let ty = r.columns().get(i).map(|c| c.type_().clone()).ok_or_else(|| DbError::Value(format!("no column {i}")))?;
    Ok(match ty {
        Type::INT8 => r.try_get::<_, Option<i64>>(i)?,
        Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(i64::from),
        Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(i64::from),
        Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(i64::from),
        other => return Err(DbError::Value(format!("column {i} is {other}, not an integer"))),
    })
}

pub(super) fn pg_float(r: &tokio_postgres::Row, i: usize) -> Result<Option<f64>, DbError> {
    let ty = r.columns().get(i).map(|c| c.type_().clone()).ok_or_else(|| DbError::Value(format!("no column {i}")))?;
    Ok(match ty {
        Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?,
        Type::FLOAT4 => r.try_get::<_, Option<f32>>(i)?.map(f64::from),
        _ => pg_int(r, i)?.map(|v| v as f64),
    })
}

impl FromCol for Option<i64> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        pg_int(r, i)
    }
}
impl FromCol for Option<f64> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        pg_float(r, i)
    }
}
impl FromCol for Option<String> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        Ok(r.try_get(i)?)
    }
}
impl FromCol for Option<Vec<u8>> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Ok(r.get(i)?)
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        Ok(r.try_get(i)?)
    }
}
impl FromCol for Option<u32> {
    fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
        Option::<i64>::sqlite(r, i)?.map(narrow).transpose()
    }
    fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
        pg_int(r, i)?.map(narrow).transpose()
    }
}

pub(super) fn narrow(v: i64) -> Result<u32, DbError> {
    u32::try_from(v).map_err(|_| DbError::Value(format!("{v} does not fit in 32 bits")))
}

macro_rules! not_null {
    ($($t:ty),*) => {$(
        impl FromCol for $t {
            fn sqlite(r: &rusqlite::Row<'_>, i: usize) -> Result<Self, DbError> {
                Option::<$t>::sqlite(r, i)?.ok_or_else(|| DbError::Value(format!("column {i} is NULL")))
            }
            fn pg(r: &tokio_postgres::Row, i: usize) -> Result<Self, DbError> {
                Option::<$t>::pg(r, i)?.ok_or_else(|| DbError::Value(format!("column {i} is NULL")))
            }
        }
    )*};
}
not_null!(i64, f64, String, Vec<u8>, u32);

/// One row, of either backend.
pub enum Row<'r> {
    /// SQLite.
    Sqlite(&'r rusqlite::Row<'r>),
    /// PostgreSQL.
    Pg(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `i` as `T`.
    ///
    /// # Errors
    /// [`DbError`] when the column is missing, NULL where `T` is not an `Option`, or of another type.
    pub fn get<T: FromCol>(&self, i: usize) -> Result<T, DbError> {
        match self {
            Row::Sqlite(r) => T::sqlite(r, i),
            Row::Pg(r) => T::pg(r, i),
        }
    }

    /// Column `i` as an unsigned sequence number or count.
    ///
    /// # Errors
    /// As [`Row::get`]; a negative value is an error.
    pub fn u64(&self, i: usize) -> Result<u64, DbError> {
        let v: i64 = self.get(i)?;
        u64::try_from(v).map_err(|_| DbError::Value(format!("column {i} is negative ({v})")))
    }
}
