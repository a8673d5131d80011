"""Plausible records of each resource, deterministic for a given seed."""

from __future__ import annotations

import random
import uuid
from datetime import date, timedelta
from typing import Any

FIRST = ["Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy",
         "Leo", "Lily", "Arthur", "Freya", "Muhammad", "Florence", "Oscar", "Grace", "Aoife",
         "Liam", "Siobhan", "Chloe", "Lachlan", "Ruby", "Aroha", "Wiremu"]
LAST = ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies",
        "Murphy", "O'Brien", "Kelly", "Walsh", "Nguyen", "Patel", "Singh", "Tremblay",
        "Roy", "Ngata", "Campbell", "Stewart"]
STREETS = ["High Street", "Station Road", "Church Lane", "Main Street", "Park Road",
           "Victoria Road", "Green Lane", "Manor Road", "Queen Street", "Mill Lane"]
TOWNS = ["London", "Leeds", "Bristol", "Dublin", "Cork", "Sydney", "Auckland", "Toronto",
         "Manchester", "Glasgow", "Cardiff", "Brighton"]
REASONS = ["Exam", "Scale & Polish", "Filling", "Root Canal", "Extraction", "Crown Fit",
           "Emergency", "Hygiene", "Consultation", "Review"]
STATES = ["Pending", "Confirmed", "Arrived", "In surgery", "Completed", "Cancelled",
          "Did not attend"]
METHODS = ["Card", "Cash", "Cheque", "BACS", "Direct Debit", "Finance"]


class Faker:
    """Makes records; the caller stamps ``id``, ``created_at`` and ``updated_at``."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.site_ids = [str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
                         for _ in range(3)]

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def money(self, lo: float = 5, hi: float = 900) -> str:
        return f"{round(self.rng.uniform(lo, hi) * 2) / 2:.1f}"

    def patient(self) -> dict[str, Any]:
        r = self.rng
        first, last = r.choice(FIRST), r.choice(LAST)
        return {
            "uuid": self.guid(),
            "active": True,
            "archived_reason": None,
            "title": r.choice(["Mr", "Mrs", "Ms", "Miss", "Dr", "Mx"]),
            "first_name": first,
            "middle_name": None,
            "last_name": last,
            "preferred_name": None,
            "gender": r.choice([True, False]),
            "date_of_birth": f"{r.randint(1935, 2022)}-{r.randint(1, 12):02d}-"
                             f"{r.randint(1, 28):02d}",
            "email_address": f"{first}.{last}{r.randint(1, 999)}@example.com".lower()
                             .replace("'", ""),
            "mobile_phone": f"07{r.randint(100000000, 999999999)}",
            "home_phone": None,
            "address_line_1": f"{r.randint(1, 250)} {r.choice(STREETS)}",
            "address_line_2": None,
            "town": r.choice(TOWNS),
            "county": None,
            "postcode": f"{r.choice('ABCDEGLMNS')}{r.randint(1, 20)} {r.randint(1, 9)}"
                        f"{r.choice('ABDEFGHJ')}{r.choice('LNPQRSTU')}",
            "site_id": r.choice(self.site_ids),
            "dentist_id": r.randint(1, 12),
            "payment_plan_id": r.choice([None, r.randint(1, 6)]),
            "medical_alert": r.random() < 0.1,
            "recall_interval": r.choice([6, 9, 12, 18, 24]),
            "ethnicity": None,
            "nhs_number": None,
            "use_email": r.random() < 0.8,
            "use_sms": r.random() < 0.8,
            "metadata": {},
        }

    def appointment(self, start_ms: int) -> dict[str, Any]:
        r = self.rng
        duration = r.choice([10, 15, 20, 30, 45, 60])
        return {
            "uuid": self.guid(),
            "patient_id": r.randint(1000, 5000),
            "practitioner_id": r.randint(1, 12),
            "state": r.choice(STATES[:2]),
            "reason": r.choice(REASONS),
            "duration": duration,
            "_start_ms": start_ms,
            "cancelled_at": None,
            "metadata": {},
        }

    def invoice(self) -> dict[str, Any]:
        r = self.rng
        amount = self.money()
        invoice: dict[str, Any] = {
            "patient_id": r.randint(1000, 5000),
            "site_id": r.choice(self.site_ids),
            "reference": f"INV{r.randint(100000, 999999)}",
            "amount": amount,
            "amount_outstanding": r.choice([amount, "0.0"]),
            "paid": False,
            "dated_on": f"2026-{r.randint(1, 11):02d}-{r.randint(1, 28):02d}",
        }
        # Payment terms of 30 days (no draw from the generator: the sequence of every other
        # record stays as it was).
        invoice["due_on"] = (date.fromisoformat(invoice["dated_on"])
                             + timedelta(days=30)).isoformat()
        return invoice

    def payment(self) -> dict[str, Any]:
        r = self.rng
        return {
            "patient_id": r.randint(1000, 5000),
            "site_id": r.choice(self.site_ids),
            "amount": self.money(),  # money received: positive, as on a receipt
            "method": r.choice(METHODS),
            "dated_on": f"2026-{r.randint(1, 11):02d}-{r.randint(1, 28):02d}",
            "reference": None,
        }

    def site(self) -> dict[str, Any]:
        r = self.rng
        town = r.choice(TOWNS)
        return {"name": f"{town} Dental", "address_line_1": f"{r.randint(1, 99)} "
                f"{r.choice(STREETS)}", "town": town, "postcode": "AB1 2CD", "active": True}

    def other(self, resource: str) -> dict[str, Any]:
        """A plain record for the resources whose exact shape does not matter here."""
        r = self.rng
        return {"name": f"{resource.rstrip('s').replace('_', ' ').title()} "
                        f"{r.randint(1, 9999)}",
                "patient_id": r.randint(1000, 5000), "active": True,
                "amount": self.money(), "notes": None}

    def mutate(self, resource: str, record: dict[str, Any]) -> dict[str, Any]:
        """A plausible edit of ``record``: the fields to change."""
        r = self.rng
        if resource == "patients":
            field = r.choice(["email_address", "mobile_phone", "address_line_1", "postcode",
                              "dentist_id", "recall_interval"])
            fresh = self.patient()
            return {field: fresh[field]}
        if resource == "appointments":
            return {"state": r.choice(STATES[:5]), "reason": r.choice(REASONS)}
        if resource == "invoices":
            outstanding = float(record.get("amount_outstanding") or 0)
            if outstanding > 0:  # a part or full payment against it
                left = r.choice([0.0, round(outstanding * r.uniform(0.2, 0.8) * 2) / 2])
                return {"amount_outstanding": f"{left:.1f}", "paid": left == 0}
            charge = self.money(20, 300)  # paid off: a new treatment charged to it
            total = float(record.get("amount") or 0) + float(charge)
            return {"amount": f"{total:.1f}", "amount_outstanding": charge, "paid": False}
        if resource == "payments":
            return {"method": r.choice(METHODS)}
        if resource == "sites":
            return {"name": f"{r.choice(TOWNS)} Dental Care"}
        return {"notes": f"note {r.randint(1, 10**6)}", "amount": self.money()}
