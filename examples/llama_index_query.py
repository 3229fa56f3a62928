"""A LlamaIndex query engine on the default offline pair that prints each answer's reliability.

    python examples/llama_index_query.py ["your question"]

The embedding is a tiny word-hashing embedding defined here (no embedding model is downloaded);
``with_reliability`` copies the reliability record of the answer into ``Response.metadata``.
"""

import hashlib
import re
import sys

from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding

from llama_index.llms.blendin import BlendIn, with_reliability


class HashingEmbedding(BaseEmbedding):
    """Bag of words hashed into 256 buckets: enough to retrieve among a few documents offline."""

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * 256
        for w in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1.0
        return v

    def _get_text_embedding(self, text):
        return self._vec(text)

    def _get_query_embedding(self, query):
        return self._vec(query)

    async def _aget_query_embedding(self, query):
        return self._vec(query)


def main(questions: list[str]) -> None:
    Settings.llm = BlendIn(model="gemma-3-270m", max_new_tokens=48, stop=["\n"])
    Settings.embed_model = HashingEmbedding()
    docs = ["Paris is the capital and largest city of France.",
            "The Eiffel Tower in Paris was completed in 1889.",
            "Berlin is the capital of Germany."]
    index = VectorStoreIndex.from_documents([Document(text=d) for d in docs])
    engine = with_reliability(index.as_query_engine(similarity_top_k=2))
    for q in questions:
        response = engine.query(q)
        rec = response.metadata["reliability"]
        print(f"Q: {q}\nA: {str(response).strip()}")
        print(f"   reliability score {rec['score']:.2f}, intervention rate "
              f"{rec['intervention_rate']:.2f}, flagged={rec['flagged']} {rec['reasons']}\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["What is the capital of France?"])
