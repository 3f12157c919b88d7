//! The owned-types rule: arguments are decoded from the network into values the handler owns and
//! results are encoded after it returns, so no argument or return type may borrow, anywhere
//! inside it. Checked here so the error names the type rather than a lifetime inside glue code.

use syn::{GenericArgument, PathArguments, Type};

use super::diagnostics::ServiceBuilder;

impl ServiceBuilder {
    /// Rejects types that can't be decoded from the network into a value the handler owns:
    /// references, non-`'static` lifetimes, `impl Trait` and `Self`, anywhere inside the type.
    pub(super) fn check_owned(&mut self, ty: &Type, what: &str) {
        match ty {
            Type::Reference(_) => self.error(
                ty,
                format_args!("service {what} must be owned types, e.g. `String` instead of `&str`"),
            ),
            Type::ImplTrait(_) => self.error(
                ty,
                format_args!(
                    "service {what} can't use `impl Trait`: name a concrete type, \
                     e.g. `Vec<u8>` instead of `impl AsRef<[u8]>`"
                ),
            ),
            Type::Paren(inner) => self.check_owned(&inner.elem, what),
            Type::Group(inner) => self.check_owned(&inner.elem, what),
            Type::Slice(inner) => self.check_owned(&inner.elem, what),
            Type::Array(inner) => self.check_owned(&inner.elem, what),
            Type::Tuple(tuple) => tuple.elems.iter().for_each(|t| self.check_owned(t, what)),
            Type::Path(path) => {
                if let Some(qself) = &path.qself {
                    self.check_owned(&qself.ty, what);
                }
                if path.qself.is_none() && path.path.segments[0].ident == "Self" {
                    self.error(
                        ty,
                        format_args!("service {what} can't mention `Self`: name the type"),
                    );
                    return;
                }
                for segment in &path.path.segments {
                    let PathArguments::AngleBracketed(args) = &segment.arguments else {
                        continue;
                    };
                    for arg in &args.args {
                        match arg {
                            GenericArgument::Type(t) => self.check_owned(t, what),
                            GenericArgument::AssocType(assoc) => self.check_owned(&assoc.ty, what),
                            GenericArgument::Lifetime(lifetime) if lifetime.ident != "static" => {
                                self.error(
                                    lifetime,
                                    format_args!(
                                        "service {what} must be owned types and can't borrow \
                                         with a lifetime, e.g. `String` instead of `&str`"
                                    ),
                                )
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
