-- Accounts, tenancies and payments belong to one Tariff, as bills and runs
-- already did: a Tariff's billing key reads and changes only its own (two
-- Tariffs in one namespace no longer share customers, tenancies or
-- payment references).
--
-- Rows written before this migration have no Tariff (`tariff IS NULL`):
-- the API shows none of them. Each Tariff's billing service adopts a copy
-- of them once when it starts (`store::adopt_namespace_records`, recorded
-- in `adopted`), so a namespace with one Tariff keeps everything it had.
-- Payments take their bill's Tariff here.

ALTER TABLE fleetward_billing.tenancies DROP CONSTRAINT tenancies_namespace_account_id_fkey;
ALTER TABLE fleetward_billing.accounts DROP CONSTRAINT accounts_pkey;
ALTER TABLE fleetward_billing.accounts ADD COLUMN tariff TEXT;
ALTER TABLE fleetward_billing.accounts ADD CONSTRAINT accounts_of_tariff UNIQUE (namespace, tariff, id);

ALTER TABLE fleetward_billing.tenancies ADD COLUMN tariff TEXT;
ALTER TABLE fleetward_billing.tenancies ADD CONSTRAINT tenancies_account_fkey
    FOREIGN KEY (namespace, tariff, account_id) REFERENCES fleetward_billing.accounts (namespace, tariff, id);
DROP INDEX fleetward_billing.tenancies_by_property;
CREATE INDEX tenancies_by_property ON fleetward_billing.tenancies (namespace, tariff, property, starts_on);

ALTER TABLE fleetward_billing.payments ADD COLUMN tariff TEXT;
UPDATE fleetward_billing.payments p SET tariff = b.tariff FROM fleetward_billing.bills b WHERE b.id = p.bill_id;
ALTER TABLE fleetward_billing.payments ALTER COLUMN tariff SET NOT NULL;
ALTER TABLE fleetward_billing.payments DROP CONSTRAINT payments_namespace_reference_key;
ALTER TABLE fleetward_billing.payments ADD CONSTRAINT payments_reference_of_tariff UNIQUE (namespace, tariff, reference);

CREATE TABLE fleetward_billing.adopted (
    namespace  TEXT NOT NULL,
    tariff     TEXT NOT NULL,
    adopted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, tariff)
);
