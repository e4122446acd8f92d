//! `spin:variables@3.0.0`: the component's `[component.X.variables]`, resolved at start-up.

use super::Ctx;
use super::spin::variables::variables::{self, Error};
use wasmtime::component::{Accessor, HasSelf};

impl variables::Host for Ctx {}

impl<U> variables::HostWithStore<U> for HasSelf<Ctx> {
    #[tracing::instrument(name = "spin_variables.get", skip(accessor), fields(otel.kind = "client"))]
    async fn get(accessor: &Accessor<U, Self>, name: String) -> wasmtime::Result<Result<String, Error>> {
        Ok(accessor.with(|mut view| lookup(view.get(), &name)))
    }
}

fn lookup(ctx: &Ctx, name: &str) -> Result<String, Error> {
    if crate::manifest::check_variable_name(name).is_err() {
        return Err(Error::InvalidName(name.to_string()));
    }
    ctx.component.variables.get(name).cloned().ok_or_else(|| Error::Undefined(name.to_string()))
}
