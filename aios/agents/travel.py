"""Travel agent: LLM planning plus flight/hotel tools plus storage (the AIOS papers' running example).

Three LLM requests: (1) extract the trip (origin, destination, nights) as JSON, (2) write a
day-by-day plan around the chosen flight and hotel, (3) one packing tip. Flights and hotels come
from a small data set shipped in the package (no network). The parse of request (1) falls back to
city names found in the task, so a model that answers nonsense still yields a valid trip.
"""

from __future__ import annotations

import re
from typing import Any

from aios.agents._common import Services, extract_json, load_data
from aios.agents.base import ExampleAgent

SYSTEM = "You are a concise travel planner."


def search_flights(origin: str, destination: str) -> list[dict[str, Any]]:
    """Flights from the local data set, cheapest first."""
    flights = load_data("travel.json")["flights"]
    return sorted(
        (f for f in flights if f["from"] == origin and f["to"] == destination), key=lambda f: f["price"]
    )


def search_hotels(city: str, max_price: float | None = None) -> list[dict[str, Any]]:
    """Hotels in ``city`` from the local data set under ``max_price`` per night, cheapest first."""
    hotels = [h for h in load_data("travel.json")["hotels"] if h["city"] == city]
    if max_price is not None:
        hotels = [h for h in hotels if h["price_per_night"] <= max_price] or hotels
    return sorted(hotels, key=lambda h: h["price_per_night"])


def cities_in(text: str) -> list[str]:
    """Known cities in ``text``, in order of appearance."""
    low = text.lower()
    found = [(low.find(c), c) for c in load_data("travel.json")["cities"] if c in low]
    return [c for _, c in sorted(found)]


def parse_trip(model_text: str, task: str) -> dict[str, Any]:
    data = extract_json(model_text)
    known = set(load_data("travel.json")["cities"])
    in_task = cities_in(task)
    origin = str(data.get("origin", "")).lower().strip()
    destination = str(data.get("destination", "")).lower().strip()
    if origin not in known:
        origin = in_task[0] if in_task else "boston"
    if destination not in known or destination == origin:
        rest = [c for c in in_task if c != origin]
        destination = rest[0] if rest else ("chicago" if origin != "chicago" else "boston")
    nights = data.get("nights")
    if not isinstance(nights, int) or not 1 <= nights <= 14:
        m = re.search(r"(\d+)\s*(?:-|\s)?(?:day|night)", task.lower())
        nights = max(1, min(14, int(m.group(1)) - (1 if "day" in m.group(0) else 0))) if m else 2
    return {"origin": origin, "destination": destination, "nights": max(1, nights)}


class TravelAgent(ExampleAgent):
    description = "plans a trip: LLM planning + flight/hotel search tools (local data) + storage"
    default_task = "Plan a 3-day trip from Boston to Chicago for a museum lover on a budget."

    def run(self, task: Any = None) -> dict[str, Any]:
        request = self.task_or_default(task)
        svc = Services()
        extracted = self.ask(
            SYSTEM,
            f"Trip request: {request}\nReply with JSON only: "
            '{"origin": "<city>", "destination": "<city>", "nights": <number>}',
            tokens=32,
        )
        trip = parse_trip(extracted, request)
        budget = "budget" in request.lower() or "cheap" in request.lower()
        flights = search_flights(trip["origin"], trip["destination"])
        hotels = search_hotels(trip["destination"], 150 if budget else None)
        flight = flights[0] if flights else None
        hotel = hotels[0] if hotels else None
        hotel_cost = hotel["price_per_night"] * trip["nights"] if hotel else 0
        total = svc.calculate(f"{flight['price'] if flight else 0} + {hotel_cost}")
        facts = (
            f"Flight: {flight['id']} {flight['depart']}-{flight['arrive']} (${flight['price']})."
            if flight
            else "No direct flight in our data; travel by train."
        )
        if hotel:
            facts += f" Hotel: {hotel['name']} near {hotel['near']}, ${hotel['price_per_night']}/night."
        plan = self.ask(
            SYSTEM,
            f"Request: {request}\n{facts}\nWrite a {trip['nights'] + 1}-day plan, one short line per day.",
            tokens=80,
        )
        tip = self.ask(
            SYSTEM, f"Give one packing tip for a trip to {trip['destination'].title()}.", tokens=24
        )
        itinerary = {**trip, "flight": flight, "hotel": hotel, "total_cost": total, "plan": plan, "tip": tip}
        svc.store(f"trip:{trip['origin']}-{trip['destination']}", str(itinerary))
        return {
            **itinerary,
            "summary": f"{trip['origin'].title()} -> {trip['destination'].title()}, {trip['nights']} nights, "
            f"about ${total:g}"
            if total is not None
            else f"{trip['origin']} -> {trip['destination']}",
            "storage": svc.used.get("storage"),
        }
