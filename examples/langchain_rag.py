"""A LangChain RAG chain on the default offline pair that flags low-reliability answers.

    python examples/langchain_rag.py ["your question"]

Retrieval is a small word-overlap retriever over a few documents (no embedding model needed
offline); the chain is prompt | ChatBlendIn, and each answer is routed on its reliability record:
answers the record flags are marked for review instead of being passed on as they are.
"""

import re
import sys

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from langchain_blendin import ChatBlendIn, LowReliabilityError, reliability_gate

DOCS = [
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower in Paris was completed in 1889.",
    "Berlin is the capital of Germany; it has about 3.8 million inhabitants.",
    "The Rhine flows from the Swiss Alps to the North Sea.",
]


def retrieve(question: str, k: int = 2) -> str:
    words = set(re.findall(r"\w+", question.lower()))
    ranked = sorted(DOCS, key=lambda d: -len(words & set(re.findall(r"\w+", d.lower()))))
    return "\n".join(ranked[:k])


def main(questions: list[str]) -> None:
    chat = ChatBlendIn(model="gemma-3-270m", max_tokens=48, stop=["\n"])  # + the default guide
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer in one sentence, using only this context:\n{context}"),
        ("human", "{question}"),
    ])
    rag = {"context": RunnableLambda(retrieve), "question": RunnablePassthrough()} | prompt | chat
    # route on reliability: a flagged answer raises LowReliabilityError, and the fallback marks it
    review = RunnableLambda(lambda _: "[needs review] the model was not reliable on this one")
    routed = rag | reliability_gate() | RunnableLambda(lambda m: m.text)
    routed = routed.with_fallbacks([review], exceptions_to_handle=(LowReliabilityError,))
    for q in questions:
        msg = rag.invoke(q)
        rec = msg.response_metadata["reliability"]
        print(f"Q: {q}\nA: {msg.text.strip()}")
        print(f"   reliability score {rec['score']:.2f}, intervention rate "
              f"{rec['intervention_rate']:.2f}, flagged={rec['flagged']} {rec['reasons']}")
        print(f"   routed: {routed.invoke(q).strip()}\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["What is the capital of France?", "When was the Eiffel Tower completed?"])
