//! A bill for a person: one HTML page per bill (self-contained: no script,
//! no external resource), and the CSV of a period's bills. Every value that
//! came from outside (names, ids, descriptions) is escaped.

use crate::bill::LineKind;
use crate::store::{BillView, Payment};

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn html(b: &BillView, payments: &[Payment]) -> String {
    let holder = b.account_name.as_deref().unwrap_or(&b.account_id);
    let mut rows = String::new();
    for l in &b.lines {
        rows.push_str(&format!(
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td></tr>\n",
            esc(&l.description),
            esc(l.quantity.as_deref().unwrap_or("")),
            esc(&match (&l.kind, &l.rate) {
                (LineKind::Tax, Some(r)) => format!("{r}%"),
                (_, Some(r)) => r.clone(),
                (_, None) => String::new(),
            }),
            esc(&l.amount)
        ));
    }
    let mut paid = String::new();
    for p in payments {
        paid.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=n>{}</td></tr>\n",
            p.received_at.format("%Y-%m-%d"),
            esc(&p.method),
            esc(&p.reference),
            esc(&p.amount.normalize().to_string())
        ));
    }
    let estimated = if b.estimated {
        "<p class=warn>Estimated: the meter did not answer the reading at the end of the period; \
         its last reading was used. The next bill corrects it.</p>"
    } else {
        ""
    };
    let resets = if b.meter_resets > 0 {
        "<p class=warn>The meter's register went back during this period (a reset or a replacement); \
         the drop was not billed.</p>"
    } else {
        ""
    };
    let revision = if b.revision > 1 {
        format!(" — revision {}", b.revision)
    } else {
        String::new()
    };
    format!(
        r#"<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Electricity bill {period} — {holder}</title>
<style>
body{{font-family:sans-serif;margin:2em;color:#222;max-width:46em}}
h1{{font-size:1.5em;border-bottom:3px solid #2a6;padding-bottom:.3em}}
table{{border-collapse:collapse;width:100%;margin:1em 0}}
td,th{{border-bottom:1px solid #ccc;padding:.35em .5em;text-align:left}}
.n{{text-align:right}} .total td{{font-weight:bold;border-top:2px solid #222}}
.warn{{background:#fff4d6;padding:.5em;border-left:4px solid #e90}}
.status{{display:inline-block;padding:.2em .6em;background:#eee;border-radius:4px}}
</style></head><body>
<h1>Electricity bill {period}{revision}</h1>
<p><b>{holder}</b> (account {account})<br>Property {property}, meter {meter}<br>
Period {from} to {to} · Tariff {tariff}</p>
<p>Meter: {start} → {end} kWh · <b>{units} kWh</b> billed</p>
{estimated}{resets}
<table><tr><th>Item</th><th class=n>kWh</th><th class=n>Rate</th><th class=n>Amount ({currency})</th></tr>
{rows}<tr class=total><td colspan=3>Total</td><td class=n>{total}</td></tr></table>
<p>Due <b>{due}</b> · Paid {paid_amount} · Balance <b>{balance}</b> {currency} · <span class=status>{status}</span></p>
<table><tr><th>Paid on</th><th>Method</th><th>Reference</th><th class=n>Amount</th></tr>
{paid}</table>
<p><small>Bill {id}</small></p>
</body></html>
"#,
        period = esc(&b.period),
        holder = esc(holder),
        account = esc(&b.account_id),
        property = esc(&b.property),
        meter = esc(&b.device_id),
        from = b.part_from,
        // The last day held (part_to is the first day after).
        to = b.part_to.pred_opt().unwrap_or(b.part_to),
        tariff = esc(&b.tariff),
        start = esc(b.start_kwh.as_deref().unwrap_or("—")),
        end = esc(b.end_kwh.as_deref().unwrap_or("—")),
        units = esc(&b.units),
        currency = esc(&b.currency),
        total = esc(&b.total),
        due = b.due_date,
        paid_amount = esc(&b.paid),
        balance = esc(&b.balance),
        status = b.status.replace('_', " "),
        id = b.id,
    )
}

/// A text cell of the CSV: one a spreadsheet would take for a formula (it
/// starts with `=`, `+`, `-`, `@`, a tab or a carriage return) is kept as
/// text by a leading `'`, as OWASP advises against CSV injection. Only
/// for values that came from outside; amounts are written as they are.
fn cell(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

/// A period's bills as CSV, one row per bill, amounts as decimal strings;
/// names and ids cannot be read as formulas (`cell`).
pub fn csv(bills: &[BillView]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "bill_id",
        "period",
        "tariff",
        "account_id",
        "account_name",
        "property",
        "meter",
        "from",
        "to",
        "revision",
        "units_kwh",
        "currency",
        "total",
        "paid",
        "balance",
        "status",
        "due_date",
        "estimated",
    ])?;
    for b in bills {
        w.write_record([
            b.id.to_string(),
            b.period.clone(),
            cell(&b.tariff),
            cell(&b.account_id),
            cell(b.account_name.as_deref().unwrap_or_default()),
            cell(&b.property),
            cell(&b.device_id),
            b.part_from.to_string(),
            b.part_to.to_string(),
            b.revision.to_string(),
            b.units.clone(),
            b.currency.clone(),
            b.total.clone(),
            b.paid.clone(),
            b.balance.clone(),
            b.status.to_string(),
            b.due_date.to_string(),
            b.estimated.to_string(),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8(bytes).expect("CSV of UTF-8 strings"))
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}
