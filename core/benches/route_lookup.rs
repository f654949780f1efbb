//! Route lookup cost against the size of the route table: a hit on an exact host, a hit through
//! a wildcard domain and a miss, at 10, 1,000 and 10,000 routed apps. The table is a hash map,
//! so each should cost the same at every size.
//!
//! `cargo bench -p slipway-core --bench route_lookup`

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use slipway_core::routes::{AppRoute, RouteTable};

/// A table like a real server's: each app at `<app>.slipway.example` and a custom domain, and
/// one app in ten also under a wildcard domain.
fn table(apps: usize) -> RouteTable {
    let mut table = RouteTable::default();
    for i in 0..apps {
        let backend = SocketAddr::from(([172, 17, (i / 250) as u8, (i % 250) as u8], 5000));
        let mut hosts = vec![
            format!("app{i}.slipway.example"),
            format!("www.customer{i}.example.com"),
        ];
        if i % 10 == 0 {
            hosts.push(format!("*.tenants{i}.example.net"));
        }
        let app = format!("app{i}").parse().expect("a valid app name");
        table.insert(hosts, AppRoute::new(app, vec![backend]));
    }
    table
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for apps in [10, 1_000, 10_000] {
        let table = table(apps);
        let exact = format!("app{}.slipway.example:8080", apps / 2);
        let wildcard = "shop.tenants0.example.net";
        let miss = "nobody.slipway.example";
        group.bench_with_input(BenchmarkId::new("exact", apps), &exact, |b, host| {
            b.iter(|| black_box(table.lookup(black_box(host))).is_some())
        });
        group.bench_with_input(BenchmarkId::new("wildcard", apps), &wildcard, |b, host| {
            b.iter(|| black_box(table.lookup(black_box(host))).is_some())
        });
        group.bench_with_input(BenchmarkId::new("miss", apps), &miss, |b, host| {
            b.iter(|| black_box(table.lookup(black_box(host))).is_none())
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
