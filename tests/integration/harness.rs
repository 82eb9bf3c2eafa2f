//! The harness's own pieces that a mistake in would pass a wrong test.

use crate::common::{metric_total, Metrics};

#[test]
fn the_metrics_reader_finds_samples_by_name_and_labels() {
    let page = "# HELP orderflow_x x\n# TYPE orderflow_x counter\n\
        orderflow_x{route=\"/api/orders/{id}\",method=\"GET\"} 3\n\
        orderflow_x{route=\"/a\\\"b\",method=\"POST\"} 2\n\
        orderflow_x_count 7\n\
        orderflow_gauge 1.5\n";
    let m = Metrics::parse(page);
    assert_eq!(m.samples.len(), 4, "{:?}", m.samples);
    assert_eq!(m.total("orderflow_x"), 5.0);
    assert_eq!(
        m.sample("orderflow_x", &[("route", "/api/orders/{id}")]),
        Some(3.0)
    );
    assert_eq!(
        m.sample("orderflow_x", &[("method", "POST"), ("route", "/a\"b")]),
        Some(2.0)
    );
    assert_eq!(m.sample("orderflow_x", &[("method", "PUT")]), None);
    // A label's name must match whole, not as a suffix of another's.
    assert_eq!(m.sample("orderflow_x", &[("thod", "GET")]), None);
    assert_eq!(m.sample("orderflow_gauge", &[]), Some(1.5));
    assert_eq!(metric_total(page, "orderflow_x_count"), 7.0);
}
