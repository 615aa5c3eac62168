//! raftsql's gRPC protocol: the code tonic and prost generate from `raftsql/v1/*.proto`.
#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("raftsql.v1");
}
