-- One decision per order: the primary key is what makes two concurrent approvals produce one winner.
CREATE TABLE approvals (
    order_id           text PRIMARY KEY REFERENCES orders(order_id),
    action             text NOT NULL CHECK (action IN ('approve', 'reject', 'resize', 'expire')),
    approver           text NOT NULL,
    quantity           integer CHECK (quantity IS NULL OR quantity > 0),
    original_quantity  integer NOT NULL,
    reason             text,
    acknowledged       boolean NOT NULL DEFAULT false,
    seen               jsonb NOT NULL,            -- what the approver saw: limit, legs, risk, quantity
    decided_at         timestamptz NOT NULL DEFAULT now()
);

-- Outcome of the pre-transmission re-check and of transmission, per order.
CREATE TABLE executions (
    order_id         text PRIMARY KEY REFERENCES orders(order_id),
    run_id           text NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('transmitted', 'refused', 'held')),
    reasons          jsonb NOT NULL DEFAULT '[]',
    fresh_mid        numeric(14, 4),
    broker_order_id  text,
    at               timestamptz NOT NULL DEFAULT now()
);

-- The kill switch: a single row; while halted nothing new is staged or sent.
CREATE TABLE risk_controls (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    halted      boolean NOT NULL DEFAULT false,
    reason      text,
    actor       text,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO risk_controls (id, halted) VALUES (true, false);
