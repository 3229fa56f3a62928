"""A LangChain agent with one tool, on the default offline pair.

    python examples/agent_tool.py ["your question"]

``create_agent`` binds the tool; ChatBlendIn describes it to both models and parses the calls the
answer makes into ``AIMessage.tool_calls``. A 270M base with a 135M guide is a weak tool user: left
to choose ("auto"), it tends to answer by itself, and the reliability record is what tells you to
distrust that answer. The script prints every message, then shows the same question with the call
required (``tool_choice``), where the engine starts the call and the models fill in the arguments.
"""

import sys

from langchain.agents import create_agent
from langchain_core.tools import tool

from langchain_blendin import ChatBlendIn


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def main(question: str) -> None:
    chat = ChatBlendIn(model="gemma-3-270m", max_tokens=64)  # + the default guide
    agent = create_agent(chat, tools=[multiply],
                         system_prompt="Use the multiply tool for any multiplication.")
    out = agent.invoke({"messages": [("user", question)]}, {"recursion_limit": 6})
    for m in out["messages"]:
        line = f"{type(m).__name__:>12}: {m.text.strip()!r}"
        if getattr(m, "tool_calls", None):
            line += f" tool_calls={[(c['name'], c['args']) for c in m.tool_calls]}"
        rec = m.response_metadata.get("reliability")
        if rec:
            line += f" [score {rec['score']:.2f}, flagged={rec['flagged']}]"
        print(line)
    forced = chat.bind_tools([multiply], tool_choice="multiply").invoke(question)
    print(f"with tool_choice='multiply': tool_calls={[(c['name'], c['args']) for c in forced.tool_calls]}"
          f" invalid={[c['error'] for c in forced.invalid_tool_calls]}")
    for call in forced.tool_calls:
        print(f"  multiply -> {multiply.invoke(call['args'])}")


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "What is 12 times 7?")
