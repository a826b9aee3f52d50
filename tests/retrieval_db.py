"""A hand-made memory database (the replayed `user_data.json` shape) for the retrieval tests."""

from __future__ import annotations


def turn(time: str, query: str) -> list:
    return [{"time": time, "query": query}, {"response": "ok"}, [], []]


def memory(content: str, keywords: str) -> dict:
    return {"reason": "r", "decision": bool(content), "content": content, "keywords": keywords}


PROCEDURAL = {"routine_swim": "The user swims every Monday morning.",
              "goal_marathon": "The user is training to run a marathon in autumn.",
              "skill_guitar": "The user is a beginner at playing the guitar."}


def hand_db() -> dict:
    """Session 0 (May 1st, six turns, four topics), then session 1 (May 3rd, two turns, still open at 18:30)."""
    return {"ProceduralMemory": PROCEDURAL, "sessions": [
        {"profile": {}, "ProceduralMemory": {},
         "interactions": [turn("2024-05-01 10:00", "My sister Maya visited."), turn("2024-05-01 10:04", "Nice day."),
                          turn("2024-05-01 10:08", "I went to a jazz concert."),
                          turn("2024-05-01 10:12", "Pottery class was fun."),
                          turn("2024-05-01 10:16", "Training for a marathon!"),
                          turn("2024-05-01 10:20", "My cat Miso is asleep.")],
         "semantic_memory": [memory("Maya is the user's younger sister.", "Maya, sister, family"), memory("", ""),
                             memory("The user went to a jazz concert downtown.", "jazz, concert, music"),
                             memory("The user enjoys weekly pottery classes.", "pottery, hobby, class"),
                             memory("The user is training for a marathon.", "marathon, running, goal"),
                             memory("The user has a grey cat named Miso.", "cat, Miso, pet")],
         "EpisodicMemory": [
             {"topic_summary": "Ann said her sister Maya came to visit.", "keywords": "Maya, sister, visit",
              "source_dialog_indices": [0]},
             {"topic_summary": "Ann chatted about the weather and a jazz concert.", "keywords": "weather, jazz",
              "source_dialog_indices": [1, 2]},
             {"topic_summary": "Ann talked about her pottery class.", "keywords": "pottery, class",
              "source_dialog_indices": [3]},
             {"topic_summary": "Ann is training for a marathon and has a cat named Miso.",
              "keywords": "marathon, cat, Miso", "source_dialog_indices": [4, 5]}]},
        {"profile": {}, "ProceduralMemory": PROCEDURAL,
         "interactions": [turn("2024-05-03 18:00", "Horror films scare me."),
                          turn("2024-05-03 18:05", "Maya moved to Lisbon.")],
         "semantic_memory": [memory("The user dislikes horror films.", "horror films, dislike"),
                             memory("The user's sister Maya moved to Lisbon.", "Maya, sister, Lisbon")],
         "EpisodicMemory": [{"topic_summary": "Ann talked about films and Maya's move.", "keywords": "films, Maya",
                             "source_dialog_indices": [0, 1]}]}]}
