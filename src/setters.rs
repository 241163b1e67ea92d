//! [`with_setters!`]: a public parameter struct with one chainable, by-value setter per field,
//! so that the struct can be `#[non_exhaustive]` (a new field is not a breaking change) and
//! still be built in one expression: `Params::default().w(0.8).mode(Mode::Reference)`.

/// Defines the struct it is given, unchanged, and an `impl` with one setter per field: a
/// `#[must_use]` method of the field's name that takes `self` by value, sets the field and
/// returns `self`, documented by the field's own doc comment. Setters never validate (that is
/// each struct's `validate`).
///
/// A field may end with a marker that changes what its setter takes:
/// - `=> into`: `impl Into<T>` (for `String` fields, so `"asgd"` reads naturally);
/// - `=> Some(T)`: the inner value of an `Option<T>` field, stored as `Some(value)`;
/// - `=> Some(into T)`: `impl Into<T>`, stored as `Some(value.into())`;
/// - `=> named(setter)`: a setter named `setter` (where a method already has the field's name).
///
/// The struct and its fields take only doc comments and attributes on the struct itself.
macro_rules! with_setters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                pub $field:ident : $ty:ty $(=> $conv:ident $(($($inner:tt)+))?)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[doc = $doc])*
                pub $field: $ty,
            )*
        }

        impl $name {
            $(
                $crate::setters::with_setters!(
                    @setter $field: $ty, [$($doc)*] $(=> $conv $(($($inner)+))?)?
                );
            )*
        }
    };

    (@setter $field:ident: $ty:ty, [$($doc:literal)*]) => {
        $(#[doc = $doc])*
        #[must_use]
        pub fn $field(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    };

    (@setter $field:ident: $ty:ty, [$($doc:literal)*] => into) => {
        $(#[doc = $doc])*
        #[must_use]
        pub fn $field(mut self, value: impl Into<$ty>) -> Self {
            self.$field = value.into();
            self
        }
    };

    (@setter $field:ident: $ty:ty, [$($doc:literal)*] => Some(into $inner:ty)) => {
        $(#[doc = $doc])*
        #[doc = ""]
        #[doc = concat!(
            "The setter takes the value itself and stores `Some(value.into())`; to clear the ",
            "option, assign `None` to the field `", stringify!($field), "`."
        )]
        #[must_use]
        pub fn $field(mut self, value: impl Into<$inner>) -> Self {
            self.$field = Some(value.into());
            self
        }
    };

    (@setter $field:ident: $ty:ty, [$($doc:literal)*] => Some($inner:ty)) => {
        $(#[doc = $doc])*
        #[doc = ""]
        #[doc = concat!(
            "The setter takes the value itself and stores `Some(value)`; to clear the option, ",
            "assign `None` to the field `", stringify!($field), "`."
        )]
        #[must_use]
        pub fn $field(mut self, value: $inner) -> Self {
            self.$field = Some(value);
            self
        }
    };

    (@setter $field:ident: $ty:ty, [$($doc:literal)*] => named($setter:ident)) => {
        $(#[doc = $doc])*
        #[doc = ""]
        #[doc = concat!(
            "Sets the field `", stringify!($field), "` (a method already has that name)."
        )]
        #[must_use]
        pub fn $setter(mut self, value: $ty) -> Self {
            self.$field = value;
            self
        }
    };
}

pub(crate) use with_setters;
