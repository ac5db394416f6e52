//! What one reconcile wants done, as one value: a kind's pure `plan`
//! returns a [`Desired`], and `carry_out::carry_out` writes it, the same way
//! for every kind (the ownership rules are `applier`'s, written once).
//! Pure: no client, no request; the plans and their tests use only this.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use super::events::PlannedEvent;
use super::kafka_client;

/// Declares the object kinds a plan may write: the [`Object`] enum, the
/// [`ObjectKind`] names and the [`Typed`] conversions, from one list.
macro_rules! objects {
    ($($kind:ident),* $(,)?) => {
        /// One object a plan writes, of a kind the operator manages.
        #[derive(Clone, Debug)]
        pub enum Object {
            $($kind($kind),)*
        }

        impl Object {
            /// The object's name.
            pub fn name(&self) -> String {
                match self {
                    $(Object::$kind(o) => o.metadata.name.clone().unwrap_or_default(),)*
                }
            }
        }

        /// The kind of an object to delete.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ObjectKind {
            $($kind,)*
        }

        $(
            impl Typed for $kind {
                const KIND: ObjectKind = ObjectKind::$kind;
                fn of(object: &Object) -> Option<&Self> {
                    match object {
                        Object::$kind(o) => Some(o),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
                fn into_object(self) -> Object {
                    Object::$kind(self)
                }
            }
        )*
    };
}

objects!(
    Secret,
    ConfigMap,
    ServiceAccount,
    Role,
    RoleBinding,
    Service,
    Deployment,
    StatefulSet,
    PersistentVolumeClaim,
);

/// A k8s-openapi type a plan may write.
pub trait Typed: Sized {
    const KIND: ObjectKind;
    fn of(object: &Object) -> Option<&Self>;
    fn into_object(self) -> Object;
}

/// One write, carried out in the order the plan lists them.
#[derive(Clone, Debug)]
pub enum Write {
    /// Server-side applied as the operator's field manager, never onto an
    /// object someone else made under the name.
    Apply(Object),
    /// A workload (Deployment or StatefulSet) whose pods talk to Kafka as
    /// `role`: its client certificate is issued or renewed first (when the
    /// Kafka is the operator's), the pod template pointed at it, then it is
    /// applied.
    ApplyKafkaClient(Object, kafka_client::Role),
    /// Made once and never replaced (a key clients hold): one of ours
    /// already there is kept, someone else's is refused.
    CreateOnce(Object),
    /// Created now; the name already taken (another writer got there
    /// first) fails the reconcile with a conflict, and the next one starts
    /// from what that writer stored.
    CreateNew(Object),
    /// Replaced at the resourceVersion it carries (the one read): a
    /// concurrent change fails the reconcile with a conflict.
    Replace(Object),
    /// Deleted only if the reconciled object controls it, and only that
    /// very object (uid precondition); gone already is fine.
    DeleteOwned(ObjectKind, String),
}

impl Write {
    pub fn apply(object: impl Typed) -> Self {
        Self::Apply(object.into_object())
    }
    pub fn kafka_client(workload: impl Typed, role: kafka_client::Role) -> Self {
        Self::ApplyKafkaClient(workload.into_object(), role)
    }
    pub fn create_once(object: impl Typed) -> Self {
        Self::CreateOnce(object.into_object())
    }
    pub fn delete_owned<T: Typed>(name: impl Into<String>) -> Self {
        Self::DeleteOwned(T::KIND, name.into())
    }
}

/// Everything a reconcile decided: the writes, the status (`None`: leave
/// it), the events, and when to look again.
#[derive(Debug)]
pub struct Desired<S> {
    pub writes: Vec<Write>,
    pub status: Option<S>,
    pub events: Vec<PlannedEvent>,
    pub requeue: Duration,
}

impl<S> Desired<S> {
    /// The objects of type `T` applied, in order (Kafka clients included).
    pub fn applied<T: Typed>(&self) -> Vec<&T> {
        applied(&self.writes)
    }

    /// The objects of type `T` created once, in order.
    pub fn created_once<T: Typed>(&self) -> Vec<&T> {
        created_once(&self.writes)
    }

    /// The names of the objects of type `T` deleted if owned.
    pub fn deleted<T: Typed>(&self) -> Vec<&str> {
        self.writes
            .iter()
            .filter_map(|w| match w {
                Write::DeleteOwned(kind, name) if *kind == T::KIND => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// The objects of type `T` that `writes` apply, in order (Kafka clients
/// included).
pub fn applied<T: Typed>(writes: &[Write]) -> Vec<&T> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Apply(o) | Write::ApplyKafkaClient(o, _) => T::of(o),
            _ => None,
        })
        .collect()
}

/// The objects of type `T` that `writes` create once, in order.
pub fn created_once<T: Typed>(writes: &[Write]) -> Vec<&T> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::CreateOnce(o) => T::of(o),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn named<T: Default>(name: &str, with: impl FnOnce(ObjectMeta) -> T) -> T {
        with(ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        })
    }

    #[test]
    fn each_query_sees_only_its_writes_and_type() {
        let d = Desired {
            writes: vec![
                Write::create_once(named("key", |metadata| Secret {
                    metadata,
                    ..Default::default()
                })),
                Write::apply(named("svc", |metadata| Service {
                    metadata,
                    ..Default::default()
                })),
                Write::kafka_client(
                    named("app", |metadata| Deployment {
                        metadata,
                        ..Default::default()
                    }),
                    kafka_client::Role::Billing,
                ),
                Write::delete_owned::<Deployment>("old"),
            ],
            status: None::<()>,
            events: vec![],
            requeue: Duration::from_secs(1),
        };
        let name = |m: &ObjectMeta| m.name.clone().unwrap();
        assert_eq!(
            d.created_once::<Secret>()
                .iter()
                .map(|s| name(&s.metadata))
                .collect::<Vec<_>>(),
            ["key"]
        );
        assert!(d.applied::<Secret>().is_empty());
        assert_eq!(d.applied::<Service>().len(), 1);
        assert_eq!(
            d.applied::<Deployment>()
                .iter()
                .map(|x| name(&x.metadata))
                .collect::<Vec<_>>(),
            ["app"]
        );
        assert_eq!(d.deleted::<Deployment>(), ["old"]);
        assert!(d.deleted::<Secret>().is_empty());
    }
}
